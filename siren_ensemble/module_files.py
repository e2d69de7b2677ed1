"""A torch module saved as a JSON config and safetensors weights, and its weights loaded back strictly (every
problem is an ArtifactError naming the file), through the artifact reader/writer every head-side file uses. The
SIREN head and the category head are both kept this way."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .artifacts import read_tensors, write_artifact
from .errors import ArtifactError


def save_module(directory: str | Path, config_file: str, config: dict, weights_file: str, module: nn.Module) -> Path:
    return write_artifact(directory, config_file, config, weights_file, module.state_dict())


def load_strictly(module: nn.Module, weights_file: Path, config_file: str, shaped_by: str, missing: str = "") -> None:
    """Load ``weights_file`` into ``module``: the same tensor names, the same shapes, read as float32.

    ``shaped_by`` names the config fields (in ``config_file``) that fix the tensors, for the error message.
    Non-finite weights load (as llm-siren loads them): their scores fail closed when scored.
    """
    if not weights_file.is_file():
        raise ArtifactError(f"{weights_file}: missing{f' ({missing})' if missing else ''}")
    expected = {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}
    module.load_state_dict(read_tensors(weights_file, expected, f"{shaped_by} in {config_file}", finite=False), strict=True)
