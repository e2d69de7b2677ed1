"""One loader per data source, registered by name; importing this package registers them all.

Registry order (harmful sources first) is the order in which duplicates are attributed: a text found
in several sources is kept under the first.
"""

# isort: off
from . import garak, pyrit, rho, eval_framework, chat  # noqa: F401  (registration side effect)
# isort: on
from .registry import SOURCES, Source, select_sources, source

__all__ = ["SOURCES", "Source", "select_sources", "source"]
