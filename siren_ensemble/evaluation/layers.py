"""``siren-ensemble layers``: at which depth a backbone's states tell harmful from benign text, and how
deep a head needs to read.

Per layer, two curves from the train and validation splits:

- the validation F1 (and AUROC) of the layer's stage-1 probe, the same probe ``train`` fits;
- the cosine-gap curve of "Safety Layers in Aligned LLMs" (Li et al., 2024): the mean cosine
  similarity of benign-benign pairs minus that of benign-harmful pairs. The gap stays near zero in
  early layers, opens over a run of middle layers (the paper's safety layers) and then levels off.

From these: the layer range where the gap opens and where it stabilises, the shallowest layer whose
probe is within ``tolerance`` of the best one, and a recommended depth cut (``train --max-layer``).

States are the mean-pooled residual states that heads read, taken from the feature cache ``train``
fills (one extraction serves both). The paper reads last-token states; this report does not: the
cache holds mean-pooled states only, and last-token states would need another pass of the backbone
over the data (a new pooling in the forward pass, with its own cache entry).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..training.depth import DepthCut
from ..training.feature_cache import FeatureExtractor
from ..training.pipeline import data_fingerprint, load_split
from ..training.probes import DEFAULT_C_GRID, LayerProbe, fit_layer_probes

REPORT_FILE = "layers.json"
PLOT_FILE = "layers.png"


@dataclass(frozen=True)
class LayerOptions:
    seed: int = 0
    jobs: int = 1
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    #: A probe this close to the best one's validation F1 counts as good as the best (0.005 = half a point).
    tolerance: float = 0.005
    #: Subtract each layer's mean state before the cosines (mean-pooled states share a large common part).
    center: bool = False
    #: The gap "opens" at the first layer past this share of its rise, and "stabilises" past the second.
    open_share: float = 0.1
    stable_share: float = 0.9


@dataclass(frozen=True)
class PairCosines:
    """Mean cosine similarity over all pairs of distinct texts within and across the two classes."""

    benign_benign: float
    benign_harmful: float
    harmful_harmful: float

    @property
    def gap(self) -> float:
        return self.benign_benign - self.benign_harmful


@dataclass(frozen=True)
class GapRange:
    """Where the gap curve rises from its floor to its peak; ``None`` when it never rises."""

    opens: int | None
    stabilises: int | None
    peak: int


@dataclass(frozen=True)
class LayerRow:
    layer: int
    probe: LayerProbe
    cosines: PairCosines

    def to_dict(self) -> dict:
        return {"layer": self.layer, "probe_f1": round(self.probe.validation_f1, 6),
                "probe_auroc": round(self.probe.validation_auroc, 6), "probe_C": self.probe.C,
                "cos_benign_benign": round(self.cosines.benign_benign, 6),
                "cos_benign_harmful": round(self.cosines.benign_harmful, 6),
                "cos_harmful_harmful": round(self.cosines.harmful_harmful, 6), "gap": round(self.cosines.gap, 6)}


@dataclass(frozen=True)
class LayerReport:
    backbone: dict
    data: dict
    options: LayerOptions
    rows: list[LayerRow]
    gap_range: GapRange
    #: The shallowest layer L such that some probe at or below L is within ``tolerance`` of the best probe.
    probe_knee: int
    recommended: DepthCut

    def to_dict(self) -> dict:
        best = max(self.rows, key=lambda row: (row.probe.validation_f1, -row.layer))
        return {
            "backbone": self.backbone, "data": self.data, "options": asdict(self.options),
            "states": "mean-pooled residual (block outputs; the last layer after the final norm)",
            "layers": [row.to_dict() for row in self.rows],
            "gap": asdict(self.gap_range),
            "best_probe": {"layer": best.layer, "f1": round(best.probe.validation_f1, 6)},
            "probe_knee": self.probe_knee,
            "recommended": self.recommended.to_dict() | {"depth_budget": round(self.recommended.share_of_depth, 4)},
        }


def _unit_rows(states: np.ndarray) -> np.ndarray:
    states = np.asarray(states, dtype=np.float64)
    norms = np.linalg.norm(states, axis=1, keepdims=True)
    return states / np.maximum(norms, 1e-12)  # an all-zero state has cosine 0 with everything


def _mean_within(units: np.ndarray) -> float:
    # Mean of u_i . u_j over i != j, from the sum of the unit vectors: O(n d) instead of O(n^2 d).
    count = len(units)
    if count < 2:
        return float("nan")
    total = units.sum(axis=0)
    return float((total @ total - np.einsum("ij,ij->", units, units)) / (count * (count - 1)))


def _mean_across(first: np.ndarray, second: np.ndarray) -> float:
    if len(first) == 0 or len(second) == 0:
        return float("nan")
    return float(first.sum(axis=0) @ second.sum(axis=0) / (len(first) * len(second)))


def pair_cosines(states: np.ndarray, labels: np.ndarray, center: bool = False) -> PairCosines:
    """Mean pairwise cosines of one layer's ``states`` (texts x hidden), split by ``labels`` (1 = harmful)."""
    states = np.asarray(states, dtype=np.float64)
    if center:
        states = states - states.mean(axis=0)
    units = _unit_rows(states)
    harmful = np.asarray(labels) == 1
    benign, harmful_units = units[~harmful], units[harmful]
    return PairCosines(_mean_within(benign), _mean_across(benign, harmful_units), _mean_within(harmful_units))


def gap_range(gaps: Sequence[float], open_share: float = 0.1, stable_share: float = 0.9) -> GapRange:
    """The layers where the gap has covered ``open_share`` and ``stable_share`` of its rise to its peak.

    The rise is measured from the lowest gap at or before the peak, so a gap that starts high, dips
    and then opens is measured from the dip.
    """
    values = np.asarray(gaps, dtype=np.float64)
    peak = int(np.argmax(values))
    floor_at = int(np.argmin(values[:peak + 1]))
    rise = values[peak] - values[floor_at]
    if not rise > 0.0:
        return GapRange(None, None, peak)
    risen = (values - values[floor_at]) / rise
    opens = next(layer for layer in range(floor_at, peak + 1) if risen[layer] >= open_share)
    stabilises = next(layer for layer in range(opens, peak + 1) if risen[layer] >= stable_share)
    return GapRange(opens, stabilises, peak)


def probe_knee(f1_by_layer: Mapping[int, float], tolerance: float) -> int:
    """The shallowest layer at which the best probe so far is within ``tolerance`` of the best overall."""
    best = max(f1_by_layer.values())
    return min(layer for layer, f1 in f1_by_layer.items() if f1 >= best - tolerance)


def recommend_cut(num_layers: int, knee: int, gaps: GapRange) -> DepthCut:
    """Deep enough for the near-best probe and for the gap to have stabilised, whichever is deeper."""
    deepest = max(knee, gaps.stabilises if gaps.stabilises is not None else knee)
    return DepthCut(deepest, num_layers, f"--max-layer {deepest}")


def analyse_layers(extractor: FeatureExtractor, data: str | Path, options: LayerOptions = LayerOptions(),
                   progress: bool = False) -> LayerReport:
    """Probe F1 and cosine gap of every layer, over ``data``'s train and validation splits."""
    if not Path(data).is_dir():
        raise InputError(f"{data}: the layer analysis needs a split directory (train.jsonl, validation.jsonl, ...)")
    train = load_split(extractor, data, "train", progress)
    validation = load_split(extractor, data, "validation", progress)
    for name, split in (("train", train), ("validation", validation)):
        if len(set(split.labels.tolist())) < 2:
            raise InputError(f"{data}/{name}.jsonl: needs both harmful (1) and benign (0) records")
    layers = sorted(train.layers)
    # eta only picks neurons, which this report does not use.
    probes, _ = fit_layer_probes(train.layers, train.labels, validation.layers, validation.labels, layers, 0.9,
                                 options.c_grid, options.seed, progress, options.jobs)
    labels = np.concatenate([train.labels, validation.labels])
    rows = [LayerRow(probe.layer, probe, pair_cosines(np.concatenate([train.layers[probe.layer], validation.layers[probe.layer]]),
                                                      labels, options.center))
            for probe in probes]
    gaps = gap_range([row.cosines.gap for row in rows], options.open_share, options.stable_share)
    knee = probe_knee({row.layer: row.probe.validation_f1 for row in rows}, options.tolerance)
    spec = extractor.adapter.spec
    backbone = {"adapter": spec.adapter, "model": spec.model, "sha256": spec.sha256, "revision": spec.revision,
                "dtype": spec.dtype, "max_length": extractor.max_length, "pooling": extractor.pooling}
    data_info = {"path": str(data), "fingerprint": data_fingerprint(data),
                 "texts": {"train": len(train.labels), "validation": len(validation.labels)},
                 "harmful": int(labels.sum()), "benign": int(len(labels) - labels.sum())}
    return LayerReport(backbone, data_info, options, rows, gaps, knee, recommend_cut(len(layers), knee, gaps))


def write_report(report: LayerReport, directory: str | Path) -> list[Path]:
    """``layers.json`` and ``layers.png`` in ``directory``."""
    from .plots import layer_analysis

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    as_dict = report.to_dict()
    json_path = directory / REPORT_FILE
    json_path.write_text(json.dumps(as_dict, indent=2) + "\n")
    return [json_path, layer_analysis(as_dict, directory / PLOT_FILE)]


def summarise(report: LayerReport) -> str:
    gaps, cut = report.gap_range, report.recommended
    lines = [f"{report.backbone['model']} ({report.backbone['dtype']}, {report.backbone['pooling']}): "
             f"{len(report.rows)} layers, {report.data['harmful']} harmful / {report.data['benign']} benign texts",
             "layer  probe F1  AUROC   cos b-b   cos b-h   gap"]
    for row in report.rows:
        marks = [mark for mark, layer in (("gap opens", gaps.opens), ("gap stable", gaps.stabilises),
                                          ("probe knee", report.probe_knee), ("cut", cut.max_layer)) if layer == row.layer]
        lines.append(f"{row.layer:>5}  {row.probe.validation_f1:.4f}    {row.probe.validation_auroc:.4f}  "
                     f"{row.cosines.benign_benign:.5f}  {row.cosines.benign_harmful:.5f}  {row.cosines.gap:+.5f}"
                     + (f"  <- {', '.join(marks)}" if marks else ""))
    if gaps.opens is None:
        lines.append(f"cosine gap: never rises above its first layers (peak at layer {gaps.peak})")
    else:
        lines.append(f"cosine gap: opens at layer {gaps.opens}, stabilises at layer {gaps.stabilises} (peak at layer {gaps.peak})")
    lines.append(f"probes: within {report.options.tolerance} F1 of the best from layer {report.probe_knee}")
    lines.append(f"recommended depth cut: train --max-layer {cut.max_layer} "
                 f"({cut.blocks_run} of {cut.num_layers} blocks, depth budget {cut.share_of_depth:.2f}); "
                 "confirm it with train and evaluate")
    return "\n".join(lines)
