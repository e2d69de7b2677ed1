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

import numpy as np
from sklearn.metrics import f1_score

from ..data.records import SafetyRecord, read_dataset
from ..errors import InputError
from ..features import weighted_neuron_features
from ..head import HeadConfig, SirenHead, SirenMLP, neuron_key
from ..calibration import MEMBER_CALIBRATION_FILE, fit_calibration
from .crossfit import cross_fitted_head_scores, record_groups
from .depth import check_depth_request, resolve_depth_cut, select_layers
from .feature_cache import FeatureExtractor
from .mlp_search import Columns, MLPParams, Scored, SearchResult, fit_and_score, logistic_candidates, predict, search_mlp
from .probes import DEFAULT_C_GRID, LayerProbe, ProbeComparison, best_probe, fit_layer_probes, shortfall

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
    #: Processes for the stage-1 layer probes (the result does not depend on it).
    jobs: int = 1
    #: Probe only layers <= max_layer, so the head's forward pass stops there (``--max-layer``).
    max_layer: int | None = None
    #: Or the share of the backbone's depth to keep (``--depth-budget``); one of the two at most.
    depth_budget: float | None = None

    def __post_init__(self):
        check_depth_request(self.max_layer, self.depth_budget)


@dataclass
class LabelledFeatures:
    records: list[SafetyRecord]
    labels: np.ndarray
    layers: dict[int, np.ndarray]


def load_split(extractor: FeatureExtractor, data: str | Path, split: str, progress: bool) -> LabelledFeatures:
    records = read_dataset(data, split)
    texts = [record.scored_text for record in records]
    labels = np.array([record.label for record in records], dtype=np.int64)
    return LabelledFeatures(records, labels, extractor.features(texts, progress, description=f"{split} features"))


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
    MLP search; the final MLP is fitted on train alone. Should it fall below the best layer probe on
    validation, the logistic candidates fitted on train take its place when they do better there; a
    head still below that probe is reported with a WARNING (``probe_comparison`` in the report).
    """
    if not Path(data).is_dir():
        raise InputError(f"{data}: training needs a split directory (train.jsonl, validation.jsonl, ...)")
    num_layers = None
    if options.layers is not None or options.max_layer is not None or options.depth_budget is not None:
        num_layers = _check_depth_before_extraction(extractor, options)
    started = time.perf_counter()
    logger.info("features of %s (%s, %s): train and validation splits of %s", extractor.adapter.spec.describe(),
                extractor.adapter.spec.dtype, extractor.pooling, data)
    train = load_split(extractor, data, "train", progress)
    validation = load_split(extractor, data, "validation", progress)
    for name, split in (("train", train), ("validation", validation)):
        if len(set(split.labels.tolist())) < 2:
            raise InputError(f"{data}/{name}.jsonl: needs both harmful (1) and benign (0) records")
    extracted = time.perf_counter()

    cut = resolve_depth_cut(num_layers or len(train.layers), options.max_layer, options.depth_budget)
    layers = select_layers(options.layers, cut)
    logger.info("features ready in %.0f s; stage 1: probes for %d layers (%s)", extracted - started, len(layers), cut.requested)
    probes, alphas = fit_layer_probes(train.layers, train.labels, validation.layers, validation.labels, layers,
                                      options.eta, options.c_grid, options.seed, progress, options.jobs)
    neurons = {probe.layer: list(probe.neurons) for probe in probes}
    probed = time.perf_counter()
    logger.info("stage 1 done in %.0f s: %d safety neurons; stage 2: %d Optuna trials, %d-fold CV",
                probed - extracted, sum(map(len, neurons.values())), options.trials, options.folds)

    train_x = weighted_neuron_features(train.layers, neurons, alphas)
    validation_x = weighted_neuron_features(validation.layers, neurons, alphas)
    stage2 = _stage2(train, train_x, validation, validation_x, probes, neurons, options, progress)
    mlp, params = stage2.mlp, stage2.chosen.params
    searched = time.perf_counter()
    logger.info("stage 2 done in %.0f s: %s, CV F1 %.4f", searched - probed, params.describe(), stage2.cv.f1)
    if stage2.comparison.warning:
        logger.warning("%s", stage2.comparison.warning)

    head = SirenHead(_head_config(extractor, layers, neurons, alphas, params, options.threshold), mlp)
    head.save(out)
    calibration = _member_calibration(train, train_x, validation, validation_x, params, options)
    calibration.save(Path(out) / MEMBER_CALIBRATION_FILE)
    calibrated = time.perf_counter()
    report = {
        "backbone": _portable(asdict(extractor.adapter.spec)) | {"max_length": extractor.max_length, "pooling": extractor.pooling},
        "data": {"path": str(data), "fingerprint": data_fingerprint(data),
                 "train": _class_counts(train.labels), "validation": _class_counts(validation.labels)},
        "options": asdict(options),
        "depth_cut": cut.to_dict(),
        "layers": [probe.to_dict() | {"alpha": alphas[probe.layer]} for probe in probes],
        "input_dim": int(train_x.shape[1]),
        "mlp": params.to_dict(),
        "cv": {"folds": options.folds, "kind": params.kind, "f1": stage2.cv.f1, "auroc": stage2.cv.auroc},
        "train_f1_in_sample": float(f1_score(train.labels, predict(mlp, train_x) >= options.threshold)),
        "validation_f1": float(f1_score(validation.labels, predict(mlp, validation_x) >= options.threshold)),
        "validation_auroc": stage2.chosen.auroc,
        "probe_comparison": stage2.comparison.to_dict(),
        "stage2": stage2.to_dict(),
        "calibration": {"file": MEMBER_CALIBRATION_FILE, "method": calibration.method, **calibration.parameters,
                        "fitted_on": f"{options.folds}-fold out-of-fold scores over train+validation"},
        "trials": stage2.search.trials,
        "seconds": {"features": round(extracted - started, 1), "probes": round(probed - extracted, 1),
                    "mlp_search": round(searched - probed, 1), "calibration": round(calibrated - searched, 1),
                    "total": round(calibrated - started, 1)},
    }
    out = Path(out)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / SUMMARY_FILE).write_text(summarise(report) + "\n")
    return report


@dataclass
class Stage2:
    search: SearchResult
    mlp: SirenMLP
    #: The final head's candidate with its validation scores (threshold 0.5), and its CV scores.
    chosen: Scored
    cv: Scored
    #: Every candidate fitted on train and scored on validation: the search's winner, then any fallbacks.
    validated: list[Scored]
    comparison: ProbeComparison

    def to_dict(self) -> dict:
        return {"search_winner": self.search.params.kind, "chosen": self.chosen.params.kind,
                "fallback": self.chosen.params != self.search.params,
                "cv_candidates": [candidate.to_dict() for candidate in self.search.candidates],
                "validation_candidates": [candidate.to_dict() for candidate in self.validated]}


def _stage2(train: LabelledFeatures, train_x: np.ndarray, validation: LabelledFeatures, validation_x: np.ndarray,
            probes: list[LayerProbe], neurons: dict[int, list[int]], options: TrainOptions, progress: bool) -> Stage2:
    """The CV search over train+validation, then the final head on train, checked against the best probe."""
    best = best_probe(probes)
    # Logistic candidates on all neurons, and on the best probe's layer alone (when that is not all of them).
    logistic_columns = [None, layer_columns(neurons)[best.layer]] if len(neurons) > 1 else [None]
    search = search_mlp(np.concatenate([train_x, validation_x]), np.concatenate([train.labels, validation.labels]),
                        record_groups(train.records + validation.records), options.trials, options.folds, options.seed,
                        progress, logistic_columns, final_rows=len(train_x))
    mlp, chosen, validated = _final_head(search, train_x, train.labels, validation_x, validation.labels, best,
                                         logistic_columns, options.seed)
    last = max(probes, key=lambda probe: probe.layer)
    return Stage2(search, mlp, chosen, search.cv_of(chosen.params), validated,
                  ProbeComparison(best, last, chosen.f1, chosen.auroc))


def _final_head(search: SearchResult, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                best: LayerProbe, logistic_columns: list[Columns], seed: int) -> tuple[SirenMLP, Scored, list[Scored]]:
    """The search's winner fitted on train, unless it falls below ``best`` on validation and a logistic candidate
    (fitted on train alike) falls less far, or as far with a better F1 then AUROC; ties keep the winner.

    The final fit leaves validation out, so thresholds, calibration and stackers fitted on it are not in-sample.
    """
    fitted = fit_and_score(train_x, train_y, val_x, val_y, [search.params], seed)
    if shortfall(best, fitted[0][1].f1, fitted[0][1].auroc) > 0.0:
        alternatives = [params for params in logistic_candidates(logistic_columns) if params != search.params]
        fitted += fit_and_score(train_x, train_y, val_x, val_y, alternatives, seed)
    mlp, chosen = max(fitted, key=lambda item: (-shortfall(best, item[1].f1, item[1].auroc), item[1].f1,
                                                np.nan_to_num(item[1].auroc)))
    if chosen.params != search.params:
        logger.info("stage 2: the search's %s fell below the layer %d probe on validation; using %s instead",
                    search.params.kind, best.layer, chosen.params.describe())
    return mlp, chosen, [scored for _, scored in fitted]


def _member_calibration(train: LabelledFeatures, train_x: np.ndarray, validation: LabelledFeatures, validation_x: np.ndarray,
                        params: MLPParams, options: TrainOptions):
    """Platt scaling of this head's score, fitted on out-of-fold scores over train + validation.

    The final head is in-sample on train, so its own scores there are too confident to calibrate on;
    the fold refits score every record as the head scores new text. Stored beside the head, applied by the
    ensemble before combining, so members trained apart share one scale.
    """
    labels = np.concatenate([train.labels, validation.labels])
    out_of_fold = cross_fitted_head_scores(np.concatenate([train_x, validation_x]), labels,
                                           record_groups(train.records + validation.records), params, options.folds, options.seed)
    return fit_calibration(out_of_fold, labels, "platt")


def layer_columns(neurons: dict[int, list[int]]) -> dict[int, tuple[int, int]]:
    """Each layer's [start, stop) columns in the concatenated features (layers ascending, as concatenated)."""
    columns, start = {}, 0
    for layer in sorted(neurons):
        columns[layer] = (start, start + len(neurons[layer]))
        start += len(neurons[layer])
    return columns


def _check_depth_before_extraction(extractor: FeatureExtractor, options: TrainOptions) -> int:
    """The backbone's depth, read from its config alone: a bad --layers/--max-layer fails now, not after an hour of
    extraction. The extractor then stops at the deepest layer the head may read, as the head's runtime pass will."""
    num_layers = extractor.adapter.num_layers(extractor.adapter.load_config(extractor.backbone_weights))
    layers = select_layers(options.layers, resolve_depth_cut(num_layers, options.max_layer, options.depth_budget))
    if max(layers) < num_layers - 1 and extractor.max_layer is None:
        extractor.max_layer = max(layers)
    return num_layers


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
    comparison = report["probe_comparison"]
    lines = [f"WARNING: {comparison['warning']}"] if comparison["warning"] else []
    lines += [
        f"backbone: {report['backbone']['adapter']} {report['backbone']['model']} ({report['backbone']['dtype']})",
        f"data: {report['data']['path']} train {report['data']['train']} validation {report['data']['validation']}",
        f"safety neurons: {report['input_dim']} over {len(report['layers'])} layers (eta {report['options']['eta']})",
        _describe_cut(report["depth_cut"], max(entry["layer"] for entry in report["layers"])),
        "layer  C       val F1  val AUROC  neurons  alpha",
    ]
    for layer in report["layers"]:
        lines.append(f"{layer['layer']:>5}  {layer['C']:<6}  {layer['validation_f1']:.3f}   {layer.get('validation_auroc', float('nan')):.3f}"
                     f"      {layer['neurons']:>7}  {layer['alpha']:.3f}")
    best, last, head = comparison["best_probe"], comparison["last_layer_probe"], comparison["head"]
    stage2 = report["stage2"]
    lines += [
        f"stage 2: {MLPParams.from_dict(report['mlp']).describe()}"
        + (f" (fallback: the searched {stage2['search_winner']} fell below the best probe on validation)" if stage2["fallback"] else ""),
        f"{report['cv']['folds']}-fold CV on train+validation: F1 {report['cv']['f1']:.4f}, AUROC {report['cv']['auroc']:.4f}",
        f"final head fitted on train; validation F1 at {report['options']['threshold']}: {report['validation_f1']:.4f}",
        f"validation F1 / AUROC at 0.5: head {head['validation_f1']:.4f} / {head['validation_auroc']:.4f}, best probe "
        f"(layer {best['layer']}) {best['validation_f1']:.4f} / {best['validation_auroc']:.4f}, last-layer probe "
        f"(layer {last['layer']}) {last['validation_f1']:.4f} / {last['validation_auroc']:.4f}"
        + (" -- HEAD BELOW BEST PROBE" if comparison["head_below_best_probe"] else ""),
        f"member calibration ({report['calibration']['file']}): platt slope {report['calibration']['slope']:.3f}, "
        f"intercept {report['calibration']['intercept']:.3f}, on out-of-fold scores over train+validation",
        f"time: {report['seconds']}",
    ]
    return "\n".join(lines)


def _describe_cut(cut: dict, deepest: int) -> str:
    if cut["max_layer"] == cut["num_layers"] - 1:
        return f"depth: no cut; the deepest layer read is {deepest} of 0-{cut['num_layers'] - 1}"
    return (f"depth cut ({cut['requested']}): layers 0-{cut['max_layer']} of {cut['num_layers']}; the forward pass "
            f"stops after block {cut['max_layer']} ({cut['share_of_depth']:.0%} of the blocks)")


def _portable(spec: dict) -> dict:
    # gguf_parts are this machine's paths; the report names the weights by model and sha256 instead.
    return {key: value for key, value in spec.items() if key != "gguf_parts"}
