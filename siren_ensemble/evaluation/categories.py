"""The ensemble's category scores on labelled data: per-category metrics, the confusion of the top category,
leave-one-source-out refits, and per-category thresholds (``calibrate --per-category``).

Everything is computed from what the heads read (the members' weighted safety neurons, ``member_x``),
combined as the runtime combines them (``CategoryCombination``). A category's metrics are one-vs-rest
over the records that say something about it: benign records (negatives for every category) and
harmful records with categories; harmful records without categories are left out and counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from joblib import Parallel, delayed

from ..category_scores import CategoryCombination
from ..config import EnsembleConfig
from ..data.records import SafetyRecord
from ..errors import InputError
from ..members import MemberPlan
from ..training.categories import (CATEGORY_REPORT_FILE, CategoryTrainOptions, fit_category_mlp,
                                   predict_categories)
from ..training.category_data import category_targets, macro_f1, mean_auroc, per_category_metrics
from . import plots
from .scoring import FeatureScorer

#: The issue's bar: macro-F1 over the categories with at least this many positive test records.
MIN_POSITIVES_FOR_MACRO = 30
DEFAULT_REFIT_WEIGHT_DECAY = 1e-2


def ensemble_category_scores(combination: CategoryCombination, plans: Sequence[MemberPlan],
                             member_x: Sequence[np.ndarray]) -> np.ndarray:
    """texts x ``combination.keys``: each member's category head on its features, combined."""
    store = combination.empty(len(member_x[0]))
    for position, plan in enumerate(plans):
        if plan.categories is not None:
            plan.categories.to("cpu")
            with torch.inference_mode():
                probabilities = plan.categories(torch.as_tensor(member_x[position])).double().numpy()
            combination.record(store, range(len(probabilities)), position, probabilities)
    return combination.combine(store)


def category_section(combination: CategoryCombination, records: Sequence[SafetyRecord], scores: np.ndarray,
                     thresholds: dict[str, float] | None = None) -> dict:
    """Per-category metrics at the thresholds, the macro-F1s, and the confusion of the top category."""
    keys = combination.keys
    thresholds = thresholds or combination.thresholds
    targets = category_targets(records, keys)
    metrics = per_category_metrics(targets.labels, scores[targets.rows], keys, thresholds)
    return {
        "categories": list(keys),
        "thresholds": {key: thresholds[key] for key in keys},
        "records": len(targets.rows),
        "uncategorised_harmful": sum(1 for record in records if record.label == 1 and not record.categories),
        "metrics": {key: value.to_dict() for key, value in metrics.items()},
        "macro_f1": macro_f1(metrics),
        f"macro_f1_min{MIN_POSITIVES_FOR_MACRO}": macro_f1(metrics, MIN_POSITIVES_FOR_MACRO),
        "mean_auroc": mean_auroc(metrics),
        "confusion": top_category_confusion(records, scores, keys),
    }


def top_category_confusion(records: Sequence[SafetyRecord], scores: np.ndarray, keys: Sequence[str]) -> dict:
    """Harmful records with categories: rows are their true categories (a record counts in each of its rows),
    columns the category scored highest."""
    counts = np.zeros((len(keys), len(keys)), dtype=int)
    for record, row_scores in zip(records, scores):
        if record.label != 1 or not record.categories or not np.isfinite(row_scores).any():
            continue
        top = int(np.nanargmax(row_scores))
        for key in record.categories:
            if key in keys:
                counts[keys.index(key), top] += 1
    return {"labels": list(keys), "counts": counts.tolist()}


def evaluate_categories(config: EnsembleConfig, plans: Sequence[MemberPlan], records: Sequence[SafetyRecord],
                        member_x: Sequence[np.ndarray], split: str, plots_dir: str | Path | None = None,
                        loso: tuple[Sequence[SafetyRecord], Sequence[np.ndarray], Sequence[SafetyRecord], Sequence[np.ndarray]] | None = None,
                        seed: int = 0, jobs: int = 1) -> dict | None:
    """``evaluate``'s category section (None without category heads): metrics on ``records``, the confusion plot,
    and with ``loso`` = (train records, train x, every record, every x) the leave-one-source-out rows."""
    combination = CategoryCombination.for_members(config, plans)
    if combination is None:
        return None
    section = category_section(combination, records, ensemble_category_scores(combination, plans, member_x))
    if plots_dir is not None:
        section["plots"] = [str(plots.category_confusion(section["confusion"], Path(plots_dir) / "category_confusion.png",
                                                         f"top category vs true category ({split})"))]
    if loso is not None:
        section["leave_one_source_out"] = leave_one_source_out(config, plans, *loso, seed=seed, jobs=jobs)
    return section


def thresholds_for_f1(records: Sequence[SafetyRecord], scores: np.ndarray, keys: Sequence[str],
                      default: dict[str, float]) -> dict[str, float]:
    """Per category, the threshold with the best F1 on these records (ties: the higher threshold);
    a category without positive records keeps its ``default``."""
    targets = category_targets(records, keys)
    chosen = {}
    for column, key in enumerate(keys):
        truth = targets.labels[:, column] == 1
        score = scores[targets.rows, column]
        if not truth.any():
            chosen[key] = default[key]
            continue
        order = np.argsort(-score, kind="stable")
        hits = np.cumsum(truth[order])
        f1 = 2 * hits / (np.arange(1, len(order) + 1) + truth.sum())
        # Only the last position of each run of equal scores is a threshold one can set.
        settable = np.append(score[order][1:] != score[order][:-1], True)
        best = np.flatnonzero(settable)[np.argmax(f1[settable])]
        below = score[order][best + 1] if best + 1 < len(order) else None
        # Halfway to the next score below, as threshold_for_recall does: same records on each side.
        cut = float(score[order][best]) if below is None else float((score[order][best] + below) / 2)
        chosen[key] = round(cut, 6)
    return chosen


def leave_one_source_out(config: EnsembleConfig, plans: Sequence[MemberPlan], train_records: Sequence[SafetyRecord],
                         train_x: Sequence[np.ndarray], records: Sequence[SafetyRecord], x: Sequence[np.ndarray],
                         seed: int = 0, jobs: int = 1) -> dict:
    """For each source with categorised harmful records: every category head refitted on train without it
    (same shape, same categories), then that source's records (from ``records``) scored at the configured
    thresholds. The SIREN heads' neurons are kept (they saw the source; named in docs/evaluation.md)."""
    combination = CategoryCombination.for_members(config, plans)
    sources = sorted({r.source for r in records if r.label == 1 and r.categories})
    rows = Parallel(n_jobs=jobs)(
        delayed(_held_out_source)(source, combination, plans, train_records, train_x, records, x, seed) for source in sources
    )
    return dict(zip(sources, rows))


def _held_out_source(source: str, combination: CategoryCombination, plans: Sequence[MemberPlan],
                     train_records: Sequence[SafetyRecord], train_x: Sequence[np.ndarray], records: Sequence[SafetyRecord],
                     x: Sequence[np.ndarray], seed: int) -> dict:
    fit_rows = np.array([i for i, r in enumerate(train_records) if r.source != source], dtype=int)
    held_rows = np.array([i for i, r in enumerate(records) if r.source == source], dtype=int)
    fit_records = [train_records[i] for i in fit_rows]
    store = combination.empty(len(held_rows))
    for position, plan in enumerate(plans):
        if plan.categories is None:
            continue
        head = plan.categories.config
        targets = category_targets(fit_records, head.categories)
        mlp = fit_category_mlp(train_x[position][fit_rows][targets.rows], targets.labels, head,
                               refit_weight_decay(plan), CategoryTrainOptions(seed=seed))
        combination.record(store, range(len(held_rows)), position, predict_categories(mlp, x[position][held_rows]))
    held = [records[i] for i in held_rows]
    section = category_section(combination, held, combination.combine(store))
    return {key: section[key] for key in ("records", "metrics", "macro_f1", "mean_auroc")}


def refit_weight_decay(plan: MemberPlan) -> float:
    """The weight decay the category head was chosen with (its training report), for refits."""
    report = Path(plan.categories.source) / CATEGORY_REPORT_FILE
    if report.is_file():
        return float(json.loads(report.read_text()).get("chosen_params", {}).get("weight_decay", DEFAULT_REFIT_WEIGHT_DECAY))
    return DEFAULT_REFIT_WEIGHT_DECAY



def calibrate_categories(config: EnsembleConfig, plans: Sequence[MemberPlan], scorer: FeatureScorer,
                         records: Sequence[SafetyRecord]) -> dict:
    """``calibrate --per-category``: each category's F1-best threshold on ``records`` (validation), and the
    metrics there at the configured thresholds and at the new ones."""
    combination = CategoryCombination.for_members(config, plans)
    if combination is None:
        raise InputError(f"{config.source}: --per-category: no member has a category head "
                         "(`siren-ensemble train-categories`)")
    member_x = [scorer.stage2_inputs(plan, scorer.layer_features(plan, records, "validation features")) for plan in plans]
    scores = ensemble_category_scores(combination, plans, member_x)
    thresholds = thresholds_for_f1(records, scores, combination.keys, combination.thresholds)
    return {"category_thresholds": thresholds,
            "configured": category_section(combination, records, scores),
            "calibrated": category_section(combination, records, scores, thresholds)}
