"""Turn pydantic validation errors into one line that names the field path (``members[1].dtype``)."""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from typing import Iterable, Sequence

from pydantic import BaseModel, ValidationError


def field_path(location: Iterable[object]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def format_validation_error(error: ValidationError, root: type[BaseModel] | None = None, prefix: Sequence[object] = ()) -> str:
    """The first few problems, each as ``path: message``; an unknown key gets a "did you mean"."""
    problems = []
    for detail in error.errors(include_url=False):
        location = list(detail["loc"])
        message = detail["msg"]
        if detail["type"] == "extra_forbidden":
            message = "unknown field"
            close = difflib.get_close_matches(str(location[-1]), _field_names_at(root, location[:-1]), n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        problems.append(f"{field_path([*prefix, *location])}: {message}")
    shown = problems[:3]
    if len(problems) > 3:
        shown.append(f"(and {len(problems) - 3} more)")
    return "; ".join(shown)


def _field_names_at(root: type | None, location: Sequence[object]) -> list[str]:
    current = root
    for part in location:
        current = _without_none(current)
        if isinstance(part, int):
            args = typing.get_args(current)
            current = args[0] if args else None
        elif inspect.isclass(current) and issubclass(current, BaseModel) and part in current.model_fields:
            current = current.model_fields[part].annotation
        else:
            return []
    current = _without_none(current)
    if inspect.isclass(current) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _without_none(annotation: object) -> object:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation
