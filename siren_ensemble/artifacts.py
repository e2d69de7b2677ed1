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
from safetensors.torch import load_file

from . import files
from .errors import ArtifactError
from .validation import format_validation_error

Model = TypeVar("Model", bound=BaseModel)


def read_config(path: Path, model: type[Model], what: str, expected_format: str) -> Model:
    """``path`` parsed as ``model``, whose ``format`` field must be ``expected_format``."""
    text = files.read_text(path, files.MAX_ARTIFACT_BYTES, ArtifactError, what)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from None
    try:
        config = model.model_validate(raw)
    except ValidationError as error:
        raise ArtifactError(f"{path}: {format_validation_error(error, model)}") from None
    if getattr(config, "format") != expected_format:
        raise ArtifactError(f"{path}: format: expected {expected_format!r}, got {getattr(config, 'format')!r}")
    return config


def read_tensors(path: Path, expected_shapes: Mapping[str, tuple[int, ...]], described_by: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` in float32: exactly the names of ``expected_shapes``, each of its shape, all finite."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (it belongs beside {described_by})")
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
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ArtifactError(f"{path}: tensor {name} holds non-finite values")
    return {name: tensor.to(torch.float32) if tensor.is_floating_point() else tensor for name, tensor in tensors.items()}
