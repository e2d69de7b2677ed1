"""Per-layer safety directions of a member's backbone, from the features ``train`` caches.

Two directions per layer, both unit vectors in the raw residual stream pointing from benign towards
harmful text:

- ``probe``: the stage-1 L1 probe's weights (fitted on standardised features, so ``w / sigma`` is the
  direction in raw states along which the probe's logit rises fastest), with the C ``train`` would pick;
- ``mean_difference``: the harmful class's mean pooled state minus the benign class's (for comparison).

``directions.json`` records per layer the probe's validation F1/AUROC and C, the norm of each raw
direction (the mean difference's norm is the class gap, the natural unit of lambda), their cosine, and
the mean norm of the pooled states; ``directions.safetensors`` holds the unit vectors. Both load strictly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..artifacts import check_dimensions, read_config, read_tensors, write_artifact
from ..errors import ArtifactError, InputError
from ..training.feature_cache import FeatureExtractor
from ..training.pipeline import load_split
from ..training.probes import fit_layer_probes, fit_probe

DIRECTIONS_CONFIG_FILE = "directions.json"
DIRECTIONS_WEIGHTS_FILE = "directions.safetensors"
DIRECTIONS_FORMAT = "siren-ensemble-steering-directions/1"
Kind = Literal["probe", "mean_difference"]
KINDS: tuple[Kind, ...] = ("probe", "mean_difference")
#: A stored direction must be a unit vector to this tolerance.
UNIT_TOLERANCE = 1e-3
#: What lambda counts: raw state units, the class gap (the norm of the harmful-minus-benign mean state), or the class
#: gap measured along the steering direction (where a few huge "massive activation" dimensions carry most of the
#: gap, its whole norm is far longer than the distance between the classes along a probe direction).
LambdaUnit = Literal["gap", "projected_gap", "absolute"]
LAMBDA_UNITS: tuple[str, ...] = get_args(LambdaUnit)


class LayerDirections(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    layer: int = Field(ge=0)
    probe_f1: float
    probe_auroc: float | None
    probe_C: float = Field(gt=0)
    #: Norm of the probe's raw direction ``w / sigma`` (per unit of pooled state).
    probe_norm: float = Field(ge=0)
    #: Norm of the harmful-minus-benign mean pooled state: the class gap (``--lambda-unit gap`` multiplies by it).
    mean_difference_norm: float = Field(ge=0)
    cosine: float
    #: Mean norm of the layer's pooled states (train split), for scale.
    mean_state_norm: float = Field(ge=0)


class DirectionsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = DIRECTIONS_FORMAT
    backbone: dict = {}
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    max_length: int = Field(ge=1)
    pooling: str = "residual_mean"
    layers: tuple[LayerDirections, ...] = Field(min_length=1)


@dataclass(frozen=True)
class SteeringDirections:
    config: DirectionsConfig
    #: kind -> layer -> unit vector (hidden,)
    vectors: dict[str, dict[int, torch.Tensor]]
    source: str = "<memory>"

    def layer(self, layer: int) -> LayerDirections:
        for entry in self.config.layers:
            if entry.layer == layer:
                return entry
        exported = ", ".join(str(entry.layer) for entry in self.config.layers)
        raise InputError(f"layer {layer}: no direction exported for it in {self.source} (layers {exported})")

    def steering_vectors(self, kind: Kind, layers: Sequence[int], unit: LambdaUnit = "gap") -> dict[int, torch.Tensor]:
        """The vectors ``v`` to add at ``layers`` (times lambda): unit directions (``absolute``), or scaled by each
        layer's class gap (``gap``: its whole norm; ``projected_gap``: its length along the direction itself)."""
        if kind not in KINDS:
            raise InputError(f"direction: expected one of {', '.join(KINDS)}, got {kind!r}")
        if unit not in LAMBDA_UNITS:
            raise InputError(f"lambda unit: expected one of {', '.join(LAMBDA_UNITS)}, got {unit!r}")
        scaled = {}
        for layer in layers:
            entry = self.layer(layer)
            scale = {"gap": entry.mean_difference_norm, "absolute": 1.0,
                     # The mean difference's own direction has cosine 1 with the gap; the probe's is whatever it is.
                     "projected_gap": entry.mean_difference_norm * (1.0 if kind == "mean_difference" else abs(entry.cosine))}
            scaled[layer] = self.vectors[kind][layer] * scale[unit]
        return scaled

    def save(self, directory: str | Path) -> Path:
        tensors = {_key(kind, layer): vector for kind, by_layer in self.vectors.items() for layer, vector in by_layer.items()}
        return write_artifact(directory, DIRECTIONS_CONFIG_FILE, self.config.model_dump(mode="json"), DIRECTIONS_WEIGHTS_FILE,
                              tensors)

    @classmethod
    def load(cls, directory: str | Path) -> "SteeringDirections":
        directory = Path(directory)
        config = _read_config(directory / DIRECTIONS_CONFIG_FILE)
        expected = {_key(kind, entry.layer): (config.hidden_size,) for kind in KINDS for entry in config.layers}
        tensors = read_tensors(directory / DIRECTIONS_WEIGHTS_FILE, expected, DIRECTIONS_CONFIG_FILE)
        vectors: dict[str, dict[int, torch.Tensor]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            for entry in config.layers:
                vector = tensors[_key(kind, entry.layer)]
                norm = float(vector.norm())
                if abs(norm - 1.0) > UNIT_TOLERANCE:
                    raise ArtifactError(f"{directory / DIRECTIONS_WEIGHTS_FILE}: tensor {_key(kind, entry.layer)} is "
                                        f"not a unit vector (norm {norm:.6f})")
                vectors[kind][entry.layer] = vector
        return cls(config, vectors, str(directory))

    def check_model(self, num_layers: int, hidden_size: int) -> None:
        check_dimensions(Path(self.source) / DIRECTIONS_CONFIG_FILE, (self.config.num_layers, self.config.hidden_size),
                         (num_layers, hidden_size), "this model")


def export_directions(extractor: FeatureExtractor, data: str | Path, layers: Sequence[int] | None = None, eta: float = 0.9,
                      seed: int = 0, jobs: int = 1, progress: bool = False) -> SteeringDirections:
    """Fit the stage-1 probes on ``data``'s train split (C picked on validation, as ``train`` does) and
    take each layer's directions; features come from the cache when ``train`` filled it."""
    train = load_split(extractor, data, "train", progress)
    validation = load_split(extractor, data, "validation", progress)
    depth = len(train.layers)
    layers = list(range(depth)) if layers is None else list(layers)
    outside = [layer for layer in layers if not 0 <= layer < depth]
    if outside:
        raise InputError(f"--layers: layer {outside[0]} is outside the backbone's {depth} layers (0-{depth - 1})")
    probes, _ = fit_layer_probes(train.layers, train.labels, validation.layers, validation.labels, layers, eta, seed=seed,
                                 progress=progress, jobs=jobs)
    entries, vectors = [], {kind: {} for kind in KINDS}
    harmful = train.labels == 1
    for probe in probes:
        features = train.layers[probe.layer].astype(np.float64)
        scaler, model = fit_probe(features, train.labels, probe.C, seed)
        raw_probe = model.coef_.ravel() / scaler.scale_
        gap = features[harmful].mean(axis=0) - features[~harmful].mean(axis=0)
        probe_unit, gap_unit = _unit(raw_probe), _unit(gap)
        vectors["probe"][probe.layer] = torch.from_numpy(probe_unit).float()
        vectors["mean_difference"][probe.layer] = torch.from_numpy(gap_unit).float()
        entries.append(LayerDirections(
            layer=probe.layer, probe_f1=round(probe.validation_f1, 6),
            probe_auroc=None if math.isnan(probe.validation_auroc) else round(probe.validation_auroc, 6),
            probe_C=probe.C, probe_norm=float(np.linalg.norm(raw_probe)), mean_difference_norm=float(np.linalg.norm(gap)),
            cosine=round(float(probe_unit @ gap_unit), 6), mean_state_norm=float(np.linalg.norm(features, axis=1).mean()),
        ))
    spec = extractor.adapter.spec
    config = DirectionsConfig(
        backbone={"adapter": spec.adapter, **({"sha256": spec.sha256} if spec.sha256 else {"model": spec.model}), "dtype": spec.dtype},
        num_layers=depth, hidden_size=int(train.layers[0].shape[1]), max_length=extractor.max_length,
        pooling=extractor.pooling, layers=tuple(entries),
    )
    return SteeringDirections(config, vectors)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(vector)
    if not np.isfinite(norm) or norm == 0:
        raise InputError("a direction is zero (the probe kept no neuron, or the classes have equal means); "
                         "leave this layer out with --layers")
    return vector / norm


def _key(kind: str, layer: int) -> str:
    return f"{kind}.layer{layer}"


def _read_config(path: Path) -> DirectionsConfig:
    config = read_config(path, DirectionsConfig, "directions config", DIRECTIONS_FORMAT)
    layers = [entry.layer for entry in config.layers]
    if len(set(layers)) != len(layers) or max(layers) >= config.num_layers:
        raise ArtifactError(f"{path}: layers: each layer once, below num_layers {config.num_layers}")
    return config
