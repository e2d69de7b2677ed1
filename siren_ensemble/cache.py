"""Where siren-ensemble keeps things it can rebuild: extracted features and converted GGUF weights."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SIREN_ENSEMBLE_CACHE"
#: Extracted features alone (they grow with the data: GBs for a full build), e.g. on another disk.
FEATURE_CACHE_ENV = "SIREN_ENSEMBLE_FEATURE_CACHE"


def cache_root() -> Path:
    """``$SIREN_ENSEMBLE_CACHE``, else ``$XDG_CACHE_HOME/siren-ensemble``, else ``~/.cache/siren-ensemble``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "siren-ensemble"


def feature_cache_root() -> Path:
    """``$SIREN_ENSEMBLE_FEATURE_CACHE``, else ``features/`` under ``cache_root()``."""
    explicit = os.environ.get(FEATURE_CACHE_ENV)
    return Path(explicit).expanduser() if explicit else cache_root() / "features"
