"""A module saved as a JSON config and safetensors weights, and its weights loaded back strictly (every problem
is an ArtifactError naming the file). The SIREN head and the category head are both kept this way."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ArtifactError


def save_module(directory: str | Path, config_file: str, config: dict, weights_file: str, module: nn.Module) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / config_file).write_text(json.dumps(config, indent=2) + "\n")
    state = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
    save_file(state, str(directory / weights_file))
    return directory


def load_strictly(module: nn.Module, weights_file: Path, config_file: str, shaped_by: str, missing: str = "") -> None:
    """Load ``weights_file`` into ``module``: the same tensor names, the same shapes, read as float32.

    ``shaped_by`` names the config fields (in ``config_file``) that fix the tensors, for the error message.
    """
    if not weights_file.is_file():
        raise ArtifactError(f"{weights_file}: missing{f' ({missing})' if missing else ''}")
    try:
        state = load_file(str(weights_file), device="cpu")
    except (SafetensorError, OSError) as error:
        raise ArtifactError(f"{weights_file}: not a readable safetensors file ({error})") from None
    expected = module.state_dict()
    absent, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if absent or unexpected:
        raise ArtifactError(
            f"{weights_file}: tensors do not match {shaped_by} in {config_file} "
            f"(missing: {absent or 'none'}; unexpected: {unexpected or 'none'})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ArtifactError(
                f"{weights_file}: tensor {key} has shape {tuple(tensor.shape)}, {config_file} implies {tuple(expected[key].shape)}"
            )
    module.load_state_dict({key: tensor.to(torch.float32) for key, tensor in state.items()}, strict=True)
