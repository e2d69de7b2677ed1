"""Steering to safety: our probe directions added to a model's residual stream at inference (h' = h + lambda v)."""

from .hooks import attach, decoder_layers, detach, steering

__all__ = ["attach", "decoder_layers", "detach", "steering"]
