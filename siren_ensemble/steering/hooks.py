"""Steering: forward hooks that add ``lambda * v`` to the output of chosen decoder layers (h' = h + lambda v).

Layer ``l`` is the output of decoder block ``l`` (0-based), the state a SIREN head reads as layer ``l``;
every position is steered, the prompt's and each generated token's. ``steering(model, vectors, scale)``
is a context manager: the hooks are removed when it exits, also on an exception, so the model answers
exactly as before.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from ..errors import InputError

#: Where causal LMs keep their decoder blocks (Llama, Qwen2/3, Gemma 3: ``model.layers``).
DECODER_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "layers")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    for path in DECODER_PATHS:
        found: object = model
        for part in path.split("."):
            found = getattr(found, part, None)
        if isinstance(found, nn.ModuleList):
            return found
    raise InputError(f"{type(model).__name__}: no decoder blocks at {', '.join(DECODER_PATHS)}; steering needs them")


@dataclass
class SteeringHandle:
    """The hooks in place; ``remove()`` takes them all off (twice is harmless)."""

    handles: list

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def attach(model: nn.Module, vectors: Mapping[int, torch.Tensor], scale: float) -> SteeringHandle:
    """Add ``scale * vectors[l]`` to the output of block ``l`` for every ``l`` given, until ``remove()``."""
    scale = check_scale(scale)
    blocks = decoder_layers(model)
    if not vectors:
        raise InputError("steering: no layer given")
    width = model.get_input_embeddings().weight.shape[1]
    deltas = {}
    for layer, vector in vectors.items():
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(blocks):
            raise InputError(f"layer {layer!r}: out of range; the model has {len(blocks)} decoder layers (0-{len(blocks) - 1})")
        vector = torch.as_tensor(vector, dtype=torch.float32)
        if tuple(vector.shape) != (width,):
            raise InputError(f"layer {layer}: the vector has shape {tuple(vector.shape)}, the model's states ({width},)")
        deltas[layer] = scale * vector
    handle = SteeringHandle([])
    for layer, delta in sorted(deltas.items()):
        handle.handles.append(blocks[layer].register_forward_hook(_adding(delta)))
    return handle


def detach(handle: SteeringHandle) -> None:
    handle.remove()


@contextlib.contextmanager
def steering(model: nn.Module, vectors: Mapping[int, torch.Tensor], scale: float) -> Iterator[SteeringHandle]:
    """Steer ``model`` inside the ``with`` block (``scale`` 0 leaves its outputs unchanged)."""
    handle = attach(model, vectors, scale)
    try:
        yield handle
    finally:
        handle.remove()


def check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise InputError(f"lambda: expected a finite number, got {scale!r}")
    return float(scale)


def _adding(delta: torch.Tensor):
    def hook(_module, _args, output):
        # Decoder blocks return their hidden states, alone or first in a tuple (older transformers, some models).
        states = output[0] if isinstance(output, tuple) else output
        steered = states + delta.to(device=states.device, dtype=states.dtype)
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    return hook
