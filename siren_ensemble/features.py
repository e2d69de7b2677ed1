"""Pure functions of the SIREN method: safety-neuron selection and layer weighting."""

from __future__ import annotations

from typing import Mapping

import numpy as np

#: Layers whose probe is the worst still count this much (the reference scripts' floor).
ALPHA_FLOOR = 0.1


def select_neurons(weights: np.ndarray, eta: float) -> list[int]:
    """The smallest set of neurons whose normalised |weight| adds up to at least ``eta``, ascending.

    ``weights`` is one layer's probe weight vector. A probe that zeroed every weight (too strong an
    L1 penalty) keeps its single largest neuron so that every layer still contributes.
    """
    if not 0.0 < eta <= 1.0:
        raise ValueError(f"eta must be in (0, 1], got {eta}")
    magnitude = np.abs(np.asarray(weights, dtype=np.float64)).ravel()
    total = magnitude.sum()
    if total == 0.0:
        return [int(np.argmax(magnitude))]
    order = np.argsort(-magnitude, kind="stable")
    cumulative = np.cumsum(magnitude[order]) / total
    # The first position where the cumulative share reaches eta (with a little float slack).
    count = int(np.searchsorted(cumulative, eta - 1e-12)) + 1
    return sorted(int(index) for index in order[:count])


def layer_alphas(layer_f1: Mapping[int, float], floor: float = ALPHA_FLOOR) -> dict[int, float]:
    """alpha_l: each layer's validation F1, min-max normalised over layers, never below ``floor``."""
    if not layer_f1:
        return {}
    values = np.array(list(layer_f1.values()), dtype=np.float64)
    low, high = values.min(), values.max()
    if high - low < 1e-12:
        return {layer: 1.0 for layer in layer_f1}
    return {layer: float(max(floor, (f1 - low) / (high - low))) for layer, f1 in layer_f1.items()}


def weighted_neuron_features(
    layer_features: Mapping[int, np.ndarray], neurons: Mapping[int, list[int]], alphas: Mapping[int, float]
) -> np.ndarray:
    """Concatenate, in ascending layer order, each layer's selected neurons scaled by alpha_l.

    This is exactly what a loaded head computes at inference time (``SirenHead.features``).
    """
    parts = [
        layer_features[layer][:, neurons[layer]].astype(np.float32) * np.float32(alphas[layer])
        for layer in sorted(neurons)
    ]
    return np.concatenate(parts, axis=1)
