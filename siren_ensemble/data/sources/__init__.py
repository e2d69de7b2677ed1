"""One loader per data source, registered by name; importing this package registers them all.

Registry order (harmful sources first) is the order in which duplicates are attributed: a text found
in several sources is kept under the first.
"""

# isort: off
from . import garak, pyrit, deepteam, rho, weighted_safety, eval_framework, chat  # noqa: F401  (registration side effect)
from . import agentharm_covers, indic_safety  # noqa: F401
# Added later, so they come last: a text they share with an earlier source stays attributed to it.
from . import uncensorbench, strongreject, redharness, india_evals, simpleaudit, aplomb, gk_hi  # noqa: F401
# isort: on
from .registry import SOURCES, Source, select_sources, source

__all__ = ["SOURCES", "Source", "select_sources", "source"]
