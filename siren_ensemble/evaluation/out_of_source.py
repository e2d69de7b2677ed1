"""Member scores from heads that never saw a record's source: cross-fitting grouped by source over train + validation.

A threshold chosen on the validation split is chosen where harmful requests look like the ones the heads were
trained on; harmful text from a new source scores lower. Here each fold holds out whole sources and refits
every member from the feature cache on the other sources, as training fits it: stage 1 (the layer probes,
their safety neurons and the layer weights; train records fit the probes, validation records pick each probe's
C and the weights) and stage 2 (the head's MLP with the head's own hyper-parameters, fitted on train records),
then the member calibration on that fold's own out-of-fold scores. Every record is then scored by heads and
calibrations that did not see its source, as a user's new source will be.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..calibration import fit_calibration
from ..data.records import SafetyRecord
from ..errors import InputError
from ..features import weighted_neuron_features
from ..members import MemberPlan
from ..training.crossfit import cross_fitted_head_scores, record_groups
from ..training.mlp_search import FitOptions, MLPParams, fit_mlp, predict
from ..training.probes import DEFAULT_C_GRID, fit_layer_probes
from .metrics import binary_metrics, threshold_for_recall
from .refit import member_mlp_params
from .scoring import FeatureScorer

DEFAULT_SOURCE_FOLDS = 5


@dataclass(frozen=True)
class RefitOptions:
    """How each fold refits a member (training's defaults: eta 0.9, its C grid, 3 calibration folds)."""

    eta: float = 0.9
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    calibration_folds: int = 3
    seed: int = 0
    #: Processes for the layer probes (the result does not depend on it).
    jobs: int = 1


@dataclass
class OutOfSourceScores:
    records: list[SafetyRecord]  # train, then validation
    labels: np.ndarray
    #: Each record's origin source (``origin_sources``): what a fold holds out, and what the threshold rule counts.
    sources: np.ndarray
    is_validation: np.ndarray
    #: Records x members: each member's calibrated score from the fold that held out the record's source.
    member_scores: np.ndarray
    #: The sources each fold held out.
    folds: list[tuple[str, ...]]

    def of_kind(self, kind: str | None) -> "OutOfSourceScores":
        """The records of one kind of input ("prompt" or "response"; None: all of them)."""
        if kind is None:
            return self
        rows = np.array([record.level == kind for record in self.records], dtype=bool)
        return OutOfSourceScores([record for record, keep in zip(self.records, rows) if keep], self.labels[rows],
                                 self.sources[rows], self.is_validation[rows], self.member_scores[rows], self.folds)


def save_out_of_source_scores(held: OutOfSourceScores, member_names: Sequence[str], path: str | Path) -> None:
    """The held-out scores as ``.npz`` (member names, scores, labels, origin sources, sources, kinds, validation rows),
    to compare members and routes without refitting again."""
    np.savez_compressed(
        path, member_names=np.array(member_names), member_scores=held.member_scores, labels=held.labels,
        origin_sources=held.sources, sources=np.array([record.source for record in held.records]),
        kinds=np.array([record.level for record in held.records]), is_validation=held.is_validation,
    )


def origin_sources(records: Sequence[SafetyRecord]) -> np.ndarray:
    """Each record's origin: its own source, or for a record the build generated from another (a templated hard
    case, scenario or refusal, which keeps its request's group) the registered source of that group. A source is
    held out together with everything made from it: its rephrasings in training would leak it, and templates held
    out without their requests measure the templates, not a new source."""
    from ..data.sources import SOURCES

    registered: dict[str, str] = {}
    for record in records:
        if record.source in SOURCES and record.group is not None:
            registered.setdefault(record.group, record.source)
    return np.array([record.source if record.source in SOURCES or record.group not in registered
                     else registered[record.group] for record in records])


def source_folds(records: Sequence[SafetyRecord], folds: int, seed: int = 0,
                 origins: Sequence[str] | None = None) -> list[tuple[str, ...]]:
    """Sources (``origins``: each record's origin source, default its own) dealt into at most ``folds`` folds,
    harmful and benign sources apart (a source counts as its majority label), each to the fold holding the fewest
    records of its class so far (largest source first): every fold leaves sources of both classes to fit on
    whenever each class has two sources or more."""
    origins = [record.source for record in records] if origins is None else list(origins)
    counts = Counter((origin, record.label) for origin, record in zip(origins, records))
    sources = sorted(set(origins))
    by_class: dict[int, list[str]] = {0: [], 1: []}
    for source in sources:
        by_class[int(counts[(source, 1)] > counts[(source, 0)])].append(source)
    for label, members in by_class.items():
        if len(members) < 2:
            raise InputError(f"out-of-source scores need two {('benign', 'harmful')[label]} sources or more to hold one out; "
                             f"the data has {len(members)} ({', '.join(members) or 'none'})")
    folds = min(folds, len(sources))
    held: list[list[str]] = [[] for _ in range(folds)]
    rng = random.Random(seed)
    for label, members in by_class.items():
        rng.shuffle(members)
        members.sort(key=lambda source: -(counts[(source, 0)] + counts[(source, 1)]))
        load = [0] * folds
        for source in members:
            fold = min(range(folds), key=lambda index: (load[index], index))
            held[fold].append(source)
            load[fold] += counts[(source, 0)] + counts[(source, 1)]
    return [tuple(sorted(fold)) for fold in held if fold]


def pinned_folds(folds: Sequence[Sequence[str]], origins: Sequence[str]) -> list[tuple[str, ...]]:
    """The given folds, cut to the sources present, and one more holding every present source they do not name: two
    builds (say, before and after a source is added) are compared with the same sources held out together."""
    present = set(origins)
    named = Counter(name for fold in folds for name in fold)
    repeated = sorted(name for name, count in named.items() if count > 1)
    if repeated:
        raise InputError(f"source folds: {', '.join(repeated)} named in more than one fold")
    held = [tuple(sorted(set(fold) & present)) for fold in folds]
    rest = tuple(sorted(present - set(named)))
    return [fold for fold in (*held, rest) if fold]


def folds_of_report(path: str | Path) -> list[tuple[str, ...]]:
    """The held-out folds a `calibrate --out-of-source --report` JSON recorded."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the report: {error}") from None
    parts = [report, *(report.get("by_kind") or {}).values()] if isinstance(report, dict) else []
    for part in parts:
        folds = (part.get("out_of_source") or {}).get("folds") if isinstance(part, dict) else None
        if isinstance(folds, list) and all(isinstance(fold, list) for fold in folds):
            return [tuple(str(name) for name in fold) for fold in folds]
    raise InputError(f"{path}: no out_of_source.folds in it: write one with `calibrate --out-of-source --report`")


def refit_member_scores(layer_x: Mapping[int, np.ndarray], labels: np.ndarray, groups: np.ndarray,
                        is_validation: np.ndarray, fit: np.ndarray, layers: Sequence[int], params: MLPParams,
                        options: RefitOptions = RefitOptions()) -> np.ndarray:
    """Calibrated scores of the rows outside ``fit`` from a member refitted on the ``fit`` rows alone (stages 1 and 2
    and the member calibration); ``layer_x`` holds every row's pooled features per layer."""
    train, validation = fit & ~is_validation, fit & is_validation
    probes, alphas = fit_layer_probes({layer: layer_x[layer][train] for layer in layers}, labels[train],
                                      {layer: layer_x[layer][validation] for layer in layers}, labels[validation],
                                      layers, options.eta, options.c_grid, options.seed, jobs=options.jobs)
    x = weighted_neuron_features(layer_x, {probe.layer: list(probe.neurons) for probe in probes}, alphas)
    mlp, _ = fit_mlp(x[train], labels[train], params, FitOptions(seed=options.seed))
    # As training calibrates a head: Platt scaling fitted on out-of-fold scores of the rows it was fitted on.
    out_of_fold = cross_fitted_head_scores(x[fit], labels[fit], groups[fit], params, options.calibration_folds, options.seed)
    return fit_calibration(out_of_fold, labels[fit], "platt").apply(predict(mlp, x[~fit]))


def out_of_source_scores(scorer: FeatureScorer, plans: Sequence[MemberPlan], train: Sequence[SafetyRecord],
                         validation: Sequence[SafetyRecord], folds: int | Sequence[Sequence[str]] = DEFAULT_SOURCE_FOLDS,
                         options: RefitOptions = RefitOptions()) -> OutOfSourceScores:
    """Every train and validation record's member scores, each from a refit that held out the record's source;
    ``folds``: how many folds of sources to deal, or the folds themselves (``pinned_folds``)."""
    records = list(train) + list(validation)
    labels = np.array([record.label for record in records], dtype=np.int64)
    sources = origin_sources(records)
    is_validation = np.arange(len(records)) >= len(train)
    groups = record_groups(records)
    held_out = (source_folds(records, folds, options.seed, sources) if isinstance(folds, int)
                else pinned_folds(folds, sources.tolist()))
    fit_masks = [~np.isin(sources, fold) for fold in held_out]
    for fold, fit in zip(held_out, fit_masks):
        for part, rows in (("train", fit & ~is_validation), ("validation", fit & is_validation)):
            if len(set(labels[rows].tolist())) < 2:
                raise InputError(f"holding out {', '.join(fold)} leaves no {part} records of one class to refit on; "
                                 f"use fewer folds or data with more sources")
    scores = np.full((len(records), len(plans)), np.nan)
    for column, plan in enumerate(plans):
        layer_x = _pooled_features(scorer, plan, train, validation)
        params = member_mlp_params(plan.head)
        for fit in fit_masks:
            scores[~fit, column] = refit_member_scores(layer_x, labels, groups, is_validation, fit,
                                                       plan.head.config.layers, params, options)
    return OutOfSourceScores(records, labels, sources, is_validation, scores, held_out)


def _pooled_features(scorer: FeatureScorer, plan: MemberPlan, train: Sequence[SafetyRecord],
                     validation: Sequence[SafetyRecord]) -> dict[int, np.ndarray]:
    # Per split, as train and evaluate extract them: the feature cache is keyed by the exact texts.
    parts = [scorer.layer_features(plan, records, description=f"{name} features")
             for name, records in (("train", train), ("validation", validation))]
    return {layer: np.concatenate([part[layer] for part in parts]) for layer in plan.head.config.layers}


def per_source_thresholds(labels: np.ndarray, scores: np.ndarray, sources: np.ndarray, target: float,
                          min_source_harmful: int) -> dict[str, float]:
    """Each source's own threshold reaching ``target`` recall, for the sources with ``min_source_harmful`` harmful
    records or more."""
    return {
        source: threshold_for_recall(labels[sources == source], scores[sources == source], target)
        for source in sorted(set(sources.tolist())) if labels[sources == source].sum() >= min_source_harmful
    }


def threshold_for_source_recall(labels: np.ndarray, scores: np.ndarray, sources: np.ndarray, target: float,
                                every_source: bool, min_source_harmful: int) -> tuple[float, dict[str, float]]:
    """The threshold at which the median harmful source (the lower median, ``every_source``: every one) reaches
    ``target`` recall, and each source's own threshold; sources with fewer than ``min_source_harmful`` harmful
    records have no say (one record moves their recall by several points)."""
    per_source = per_source_thresholds(labels, scores, sources, target, min_source_harmful)
    if not per_source:
        raise InputError(f"no source has {min_source_harmful} harmful records or more to set a threshold on")
    ordered = sorted(per_source.values())
    # A source reaches the target at any threshold up to its own: the lower median keeps at least half of them there.
    return (ordered[0] if every_source else ordered[(len(ordered) - 1) // 2]), per_source


def source_summary(labels: np.ndarray, scores: np.ndarray, sources: np.ndarray, threshold: float,
                   min_source_harmful: int) -> dict:
    """Recall on each harmful source and FPR on each benign one at ``threshold``, and what an unseen harmful source
    can expect: the median and the worst quartile of the per-source recalls (sources with enough harmful records)."""
    by_source = {source: binary_metrics(labels[sources == source], scores[sources == source], threshold).to_dict()
                 for source in sorted(set(sources.tolist()))}
    recall = {source: metrics["recall"] for source, metrics in by_source.items() if metrics["recall"] is not None}
    fpr = {source: metrics["fpr"] for source, metrics in by_source.items() if metrics["fpr"] is not None}
    voting = [recall[source] for source in recall if labels[sources == source].sum() >= min_source_harmful]
    return {
        "recall_by_source": recall,
        "fpr_by_source": fpr,
        "expected_recall_unseen_source": None if not voting else {
            "median": round(float(np.median(voting)), 4),
            "worst_quartile": round(float(np.quantile(voting, 0.25)), 4),
            "worst": round(float(min(voting)), 4),
            "sources": len(voting),
        },
        "overall": binary_metrics(labels, scores, threshold).to_dict(),
    }
