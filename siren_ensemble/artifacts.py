"""Reading the small artifacts saved beside heads (a JSON config + a safetensors file), strictly.

Every problem is an ``ArtifactError`` naming the file: too big, not JSON, an unknown or missing field (with
a "did you mean"), a wrong format tag, missing or unexpected tensors, a tensor of the wrong shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import files
from .errors import ArtifactError
from .validation import format_validation_error

Model = TypeVar("Model", bound=BaseModel)


def read_config(path: Path, model: type[Model], what: str, expected_format: str | None = None,
                limit: int = files.MAX_ARTIFACT_BYTES) -> Model:
    """``path`` parsed as ``model``; with ``expected_format``, its ``format`` field must be that."""
    text = files.read_text(path, limit, ArtifactError, what)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from None
    try:
        config = model.model_validate(raw)
    except ValidationError as error:
        raise ArtifactError(f"{path}: {format_validation_error(error, model)}") from None
    if expected_format is not None and getattr(config, "format") != expected_format:
        raise ArtifactError(f"{path}: format: expected {expected_format!r}, got {getattr(config, 'format')!r}")
    return config


def read_tensors(path: Path, expected_shapes: Mapping[str, tuple[int, ...]], described_by: str,
                 finite: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` in float32: exactly the names of ``expected_shapes``, each of its shape, and
    (``finite``) no NaN or infinity."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise ArtifactError(f"{path}: not a readable safetensors file ({error})") from None
    missing = sorted(set(expected_shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected_shapes))
    if missing or unexpected:
        raise ArtifactError(f"{path}: tensors do not match {described_by} "
                            f"(missing: {missing or 'none'}; unexpected: {unexpected or 'none'})")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected_shapes[name]):
            raise ArtifactError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                                f"{described_by} implies {tuple(expected_shapes[name])}")
        if finite and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArtifactError(f"{path}: tensor {name} holds non-finite values")
    return {name: tensor.to(torch.float32) if tensor.is_floating_point() else tensor for name, tensor in tensors.items()}


def write_artifact(directory: str | Path, config_file: str, config: dict, weights_file: str,
                   tensors: Mapping[str, torch.Tensor]) -> Path:
    """``config`` as indented JSON and ``tensors`` as safetensors, side by side in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / config_file).write_text(json.dumps(config, indent=2) + "\n")
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, str(directory / weights_file))
    return directory


def check_dimensions(config_path: Path, made_for: tuple[int, int], found: tuple[int, int], what: str) -> None:
    """An artifact made for a backbone of ``made_for`` (layers, width) put on ``what`` of ``found`` is refused."""
    if tuple(made_for) != tuple(found):
        raise ArtifactError(f"{config_path}: made for a backbone of {made_for[0]} layers x {made_for[1]}, "
                            f"but {what} has {found[0]} x {found[1]}")
