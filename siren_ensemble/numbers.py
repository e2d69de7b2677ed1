"""Numbers read from artifact files (calibration, stacking): finite, and numbers rather than strings or booleans.

A string or a NaN that slipped through here would surface at scoring time as a numpy traceback, or as a
NaN score that reads as "not harmful"; caught at load, the error names the file and the field.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

from .errors import ArtifactError


def finite_number(value: Any, source: str | Path, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ArtifactError(f"{source}: {field}: expected a finite number, got {_show(value)}")
    return float(value)


def finite_numbers(values: Any, source: str | Path, field: str) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)):
        raise ArtifactError(f"{source}: {field}: expected a list of numbers, got {type(values).__name__}")
    return tuple(finite_number(value, source, f"{field}[{index}]") for index, value in enumerate(values))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
