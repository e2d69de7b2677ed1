"""The whole training run: data -> cached features -> layer probes -> MLP search -> head + report.

Same seed and same data give the same head: the splits are files, the feature cache is keyed by
content, probes are deterministic and the Optuna sampler and every torch fit are seeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import f1_score

from ..data.records import SafetyRecord, read_dataset
from ..errors import InputError
from ..features import weighted_neuron_features
from ..head import HeadConfig, SirenHead, neuron_key
from .feature_cache import FeatureExtractor
from .mlp_search import FitOptions, fit_mlp, predict, search_mlp
from .probes import DEFAULT_C_GRID, fit_layer_probes

logger = logging.getLogger(__name__)

REPORT_FILE = "training_report.json"
SUMMARY_FILE = "training_summary.txt"


@dataclass(frozen=True)
class TrainOptions:
    eta: float = 0.9
    trials: int = 32
    folds: int = 3
    layers: tuple[int, ...] | None = None
    seed: int = 0
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    threshold: float = 0.5


@dataclass
class LabelledFeatures:
    records: list[SafetyRecord]
    labels: np.ndarray
    groups: np.ndarray
    layers: dict[int, np.ndarray]


def load_split(extractor: FeatureExtractor, data: str | Path, split: str, progress: bool) -> LabelledFeatures:
    records = read_dataset(data, split)
    texts = [record.scored_text for record in records]
    labels = np.array([record.label for record in records], dtype=np.int64)
    groups = np.array([record.group or f"{record.source}:{index}" for index, record in enumerate(records)])
    return LabelledFeatures(records, labels, groups, extractor.features(texts, progress, description=f"{split} features"))


def data_fingerprint(data: str | Path) -> str:
    """sha256 of the split directory's manifest (or of the JSONL file), recorded in the report."""
    path = Path(data)
    target = path / "manifest.json" if path.is_dir() else path
    if not target.is_file():
        target = path / "train.jsonl"
    return hashlib.sha256(target.read_bytes()).hexdigest()


def train_head(extractor: FeatureExtractor, data: str | Path, out: str | Path, options: TrainOptions = TrainOptions(),
               progress: bool = False) -> dict:
    """Train a head on ``data``'s train split and write it to ``out``.

    Validation picks each probe's C and the layer weights, and joins train in the cross-validated
    MLP search; the final MLP is fitted on train alone.
    """
    if not Path(data).is_dir():
        raise InputError(f"{data}: training needs a split directory (train.jsonl, validation.jsonl, ...)")
    started = time.perf_counter()
    logger.info("features of %s (%s, %s): train and validation splits of %s", extractor.adapter.spec.describe(),
                extractor.adapter.spec.dtype, extractor.pooling, data)
    train = load_split(extractor, data, "train", progress)
    validation = load_split(extractor, data, "validation", progress)
    for name, split in (("train", train), ("validation", validation)):
        if len(set(split.labels.tolist())) < 2:
            raise InputError(f"{data}/{name}.jsonl: needs both harmful (1) and benign (0) records")
    extracted = time.perf_counter()

    num_layers = len(train.layers)
    layers = _check_layers(options.layers, num_layers)
    logger.info("features ready in %.0f s; stage 1: probes for %d layers", extracted - started, len(layers))
    probes, alphas = fit_layer_probes(train.layers, train.labels, validation.layers, validation.labels, layers,
                                      options.eta, options.c_grid, options.seed, progress)
    neurons = {probe.layer: list(probe.neurons) for probe in probes}
    probed = time.perf_counter()
    logger.info("stage 1 done in %.0f s: %d safety neurons; stage 2: %d Optuna trials, %d-fold CV",
                probed - extracted, sum(map(len, neurons.values())), options.trials, options.folds)

    train_x = weighted_neuron_features(train.layers, neurons, alphas)
    validation_x = weighted_neuron_features(validation.layers, neurons, alphas)
    x = np.concatenate([train_x, validation_x])
    y = np.concatenate([train.labels, validation.labels])
    groups = np.concatenate([train.groups, validation.groups])
    search = search_mlp(x, y, groups, options.trials, options.folds, options.seed, progress)
    # The final fit leaves validation out, so thresholds, calibration and stackers fitted on it are not in-sample.
    mlp, _ = fit_mlp(train_x, train.labels, search.params, FitOptions(seed=options.seed))
    searched = time.perf_counter()
    logger.info("stage 2 done in %.0f s: CV F1 %.4f", searched - probed, search.cv_f1)

    head = SirenHead(_head_config(extractor, layers, neurons, alphas, search.params, options.threshold), mlp)
    head.save(out)
    report = {
        "backbone": _portable(asdict(extractor.adapter.spec)) | {"max_length": extractor.max_length, "pooling": extractor.pooling},
        "data": {"path": str(data), "fingerprint": data_fingerprint(data),
                 "train": _class_counts(train.labels), "validation": _class_counts(validation.labels)},
        "options": asdict(options),
        "layers": [probe.to_dict() | {"alpha": alphas[probe.layer]} for probe in probes],
        "input_dim": int(x.shape[1]),
        "mlp": search.params.to_dict(),
        "cv": {"folds": options.folds, "f1": search.cv_f1, "auroc": search.cv_auroc},
        "train_f1_in_sample": float(f1_score(train.labels, predict(mlp, train_x) >= options.threshold)),
        "validation_f1": float(f1_score(validation.labels, predict(mlp, validation_x) >= options.threshold)),
        "trials": search.trials,
        "seconds": {"features": round(extracted - started, 1), "probes": round(probed - extracted, 1),
                    "mlp_search": round(searched - probed, 1), "total": round(searched - started, 1)},
    }
    out = Path(out)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / SUMMARY_FILE).write_text(summarise(report) + "\n")
    return report


def _check_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise InputError(f"--layers: layer {bad[0]} is outside 0-{num_layers - 1} (the backbone has {num_layers} blocks)")
    return sorted(set(layers))


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    return {"harmful": int(labels.sum()), "benign": int(len(labels) - labels.sum())}


def _head_config(extractor: FeatureExtractor, layers, neurons, alphas, params, threshold) -> HeadConfig:
    spec = extractor.adapter.spec
    return HeadConfig.model_validate({
        "task": "content",
        "base_model": {"model_id": spec.model, "revision": spec.revision},
        "siren_module": {
            "pooling_type": extractor.pooling,
            "selected_layers": layers,
            "layer_weights": {layer: round(alphas[layer], 6) for layer in layers},
            "selected_neurons_dict": {neuron_key(layer): neurons[layer] for layer in layers},
        },
        "mlp": {"input_dim": sum(len(neurons[layer]) for layer in layers), "layer_dims": list(params.layer_dims),
                "dropout_rates": list(params.dropout_rates), "num_classes": 2},
        "inference": {"max_length": extractor.max_length, "default_threshold": threshold},
    })


def summarise(report: dict) -> str:
    lines = [
        f"backbone: {report['backbone']['adapter']} {report['backbone']['model']} ({report['backbone']['dtype']})",
        f"data: {report['data']['path']} train {report['data']['train']} validation {report['data']['validation']}",
        f"safety neurons: {report['input_dim']} over {len(report['layers'])} layers (eta {report['options']['eta']})",
        "layer  C       val F1  neurons  alpha",
    ]
    for layer in report["layers"]:
        lines.append(f"{layer['layer']:>5}  {layer['C']:<6}  {layer['validation_f1']:.3f}   {layer['neurons']:>7}  {layer['alpha']:.3f}")
    mlp = report["mlp"]
    lines += [
        f"MLP: layer_dims {mlp['layer_dims']} dropout {mlp['dropout_rates']} lr {mlp['learning_rate']:.2e} "
        f"weight decay {mlp['weight_decay']:.1e} epochs {mlp['epochs']}",
        f"{report['cv']['folds']}-fold CV on train+validation: F1 {report['cv']['f1']:.4f}, AUROC {report['cv']['auroc']:.4f}",
        f"final MLP fitted on train; validation F1 at {report['options']['threshold']}: {report['validation_f1']:.4f}",
        f"time: {report['seconds']}",
    ]
    return "\n".join(lines)


def _portable(spec: dict) -> dict:
    # gguf_parts are this machine's paths; the report names the weights by model and sha256 instead.
    return {key: value for key, value in spec.items() if key != "gguf_parts"}
