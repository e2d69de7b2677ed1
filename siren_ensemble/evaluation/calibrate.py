"""``siren-ensemble calibrate``: the threshold that reaches a target recall on validation data.

Optionally the ensemble score is first recalibrated (Platt or isotonic, fitted on the same
validation data), and the threshold is chosen on the calibrated score. With ``per_source``, the
threshold is the lowest of the per-source thresholds, so every source with at least
``min_source_harmful`` harmful records reaches the target (smaller sources are too noisy to set a
threshold: one record moves their recall by several points); the report names the worst source.

With ``out_of_source``, the threshold and bands are chosen instead on train + validation scores from
members refitted without each record's source (``out_of_source.py``): harmful text from a source the
heads never saw scores lower than validation suggests, and that is what a deployment meets. The
threshold is then the one at which the median harmful source (``per_source``: every one) reaches
the target; the validation numbers at that threshold stay in the report beside the held-out ones.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from ..config import EnsembleConfig, read_yaml
from ..data.records import read_dataset
from ..errors import ConfigError, InputError
from ..members import validate_plan
from ..calibration import Method, fit_calibration
from ..decision import DecisionPath
from ..weights import is_local, is_packaged
from .cascade_bands import BandRule, CascadeFit, fit_bands
from .categories import calibrate_categories
from .metrics import binary_metrics, threshold_for_recall
from .out_of_source import (
    DEFAULT_SOURCE_FOLDS, OutOfSourceScores, RefitOptions, out_of_source_scores, per_source_thresholds,
    save_out_of_source_scores, source_summary, threshold_for_source_recall,
)
from .scoring import FeatureScorer


def calibrate(config_path: str | Path, data: str | Path, target_recall: float, per_source: bool = False,
              method: Method | None = None, calibration_out: str | Path | None = None,
              cache_dir: str | Path | None = None, progress: bool = False, min_source_harmful: int = 20,
              band_rule: BandRule = BandRule(), per_category: bool = False, out_of_source: bool = False,
              source_folds: int | Sequence[Sequence[str]] = DEFAULT_SOURCE_FOLDS, refit: RefitOptions = RefitOptions(),
              kind: str | None = None,
              held: OutOfSourceScores | None = None, scores_out: str | Path | None = None) -> dict:
    """The threshold (and a cascade's bands) reaching ``target_recall``, chosen on validation scores, or with
    ``out_of_source`` on train + validation scores from members refitted without each record's source (the median
    harmful source reaching the target; with ``per_source`` every source). The in-distribution numbers at the
    chosen threshold stay in the report (``validation``).

    ``kind`` ("prompt" or "response") chooses them for that kind's route alone, on the records of that kind
    (``calibrate_by_kind`` does every kind); ``held`` reuses out-of-source scores computed before, and ``scores_out``
    writes them (``.npz``) for analysis."""
    if not 0.0 < target_recall <= 1.0:
        raise InputError(f"--target-recall: must be in (0, 1], got {target_recall}")
    config = _config_without_bands(config_path)
    routed = config.for_kind(kind)
    if routed.combiner.type == "vote":
        where = f"by_kind.{kind}.combiner.type" if routed is not config else "combiner.type"
        raise ConfigError(f"{config_path}: {where}: vote decides by its rule, not a threshold; "
                          "calibrate a score combiner (mean, weighted_mean, max, stacking)")
    plans, _ = validate_plan(config)
    all_records = read_dataset(data, "validation")
    # Scored as a whole, then cut to the kind: the feature cache is keyed on the exact list of texts.
    of_kind = np.array([kind is None or record.level == kind for record in all_records], dtype=bool)
    records = [record for record, keep in zip(all_records, of_kind) if keep]
    labels = np.array([record.label for record in records], dtype=int)
    if labels.sum() == 0:
        what = f"no harmful {kind} records" if kind else "no harmful records"
        raise InputError(f"{data}: the validation data has {what} to set a recall threshold on")
    if method is not None and calibration_out is None:
        raise InputError("--method needs --calibration-out, where the fitted mapping is written")
    if method is not None and out_of_source:
        raise InputError("--method fits a calibration on validation scores; --out-of-source chooses on refitted "
                         "members' scores: use one of the two")
    scorer = FeatureScorer(config, plans, cache_dir, progress)
    member_scores = scorer.member_scores(all_records, "validation features")[of_kind]
    # Without bands a cascade decides every text at its last stage: every member's combined score.
    path = DecisionPath.from_config(routed, plans)

    calibration = None
    if method is None:
        scores = path.scores(member_scores)  # the runtime's scale, the config's calibration included
    else:
        # The new calibration replaces the config's own, so it is fitted on the combined score before it.
        combined = replace(path, calibration=None).scores(member_scores)
        calibration = fit_calibration(combined, labels, method)
        calibration.save(calibration_out)
        scores = calibration.apply(combined)
        path = replace(path, calibration=calibration)

    sources = np.array([record.source for record in records])
    held_out = None
    if out_of_source:
        if held is None:
            held = _held_out_scores(scorer, plans, data, all_records, source_folds, refit, scores_out)
        held_out = _choose_out_of_source(held.of_kind(kind), path, target_recall, per_source, min_source_harmful, band_rule)
        threshold, per_source_threshold, cascade = held_out.threshold, held_out.per_source_threshold, held_out.cascade
    else:
        per_source_threshold = per_source_thresholds(labels, scores, sources, target_recall, min_source_harmful)
        threshold = threshold_for_recall(labels, scores, target_recall)
        if per_source:
            threshold = min([threshold, *per_source_threshold.values()])
        cascade = fit_bands(path, member_scores, labels, threshold, band_rule) if path.staged else None
    if cascade is not None:
        scores = path.with_bands(cascade.bands).scores(member_scores)  # what the written config decides
    by_source = {source: binary_metrics(labels[sources == source], scores[sources == source], threshold).to_dict()
                 for source in sorted(set(sources.tolist()))}
    harmful_sources = {source: m["recall"] for source, m in by_source.items() if m["recall"] is not None}
    benign_sources = {source: m["fpr"] for source, m in by_source.items() if m["fpr"] is not None}
    return {
        "config": str(config_path), "data": str(data), "kind": kind, "target_recall": target_recall, "per_source": per_source,
        "chosen_on": "out_of_source" if out_of_source else "validation",
        "calibration": None if calibration is None else {"method": method, "path": str(calibration_out)},
        "threshold": threshold,
        "validation": binary_metrics(labels, scores, threshold).to_dict(),
        "worst_recall_source": min(harmful_sources.items(), key=lambda item: item[1]) if harmful_sources else None,
        "worst_fpr_source": max(benign_sources.items(), key=lambda item: item[1]) if benign_sources else None,
        "per_source_threshold": per_source_threshold,
        "per_source_metrics": by_source,
        "cascade": None if cascade is None else cascade.to_dict(),
        "out_of_source": None if held_out is None else held_out.report,
        "categories": calibrate_categories(config, plans, scorer, records) if per_category else None,
    }


@dataclass
class _OutOfSourceChoice:
    threshold: float
    per_source_threshold: dict[str, float]
    cascade: CascadeFit | None
    report: dict


def _choose_out_of_source(held: OutOfSourceScores, path: DecisionPath, target_recall: float, every_source: bool,
                          min_source_harmful: int, band_rule: BandRule) -> _OutOfSourceChoice:
    """The threshold and bands chosen on out-of-source scores, and what they give there: overall, per held-out
    source and per kind of input (prompt alone, prompt and response)."""
    # Each fold refitted its own member calibrations: the scores are on the shared scale already.
    held_path = replace(path, member_calibrations=(None,) * len(path.member_names))
    combined = held_path.scores(held.member_scores)
    threshold, per_source_threshold = threshold_for_source_recall(held.labels, combined, held.sources, target_recall,
                                                                  every_source, min_source_harmful)
    cascade = fit_bands(held_path, held.member_scores, held.labels, threshold, band_rule) if held_path.staged else None
    if cascade is not None:
        combined = held_path.with_bands(cascade.bands).scores(held.member_scores)
    kinds = np.array([record.level for record in held.records])
    by_kind = {}
    for kind in sorted(set(kinds.tolist())):
        rows = kinds == kind
        try:
            own = round(threshold_for_source_recall(held.labels[rows], combined[rows], held.sources[rows], target_recall,
                                                    every_source, min_source_harmful)[0], 6)
        except InputError:  # no source of this kind has enough harmful records to have a say
            own = None
        by_kind[kind] = {"threshold_by_the_same_rule": own,
                         **source_summary(held.labels[rows], combined[rows], held.sources[rows], threshold, min_source_harmful)}
    return _OutOfSourceChoice(threshold, per_source_threshold, cascade, {
        "auroc": _held_out_auroc(held, combined, path.member_names),
        "folds": [list(fold) for fold in held.folds],
        "rule": "every harmful source reaches the target" if every_source else "the median harmful source reaches the target",
        "records": int(len(held.labels)), "harmful": int(held.labels.sum()),
        **source_summary(held.labels, combined, held.sources, threshold, min_source_harmful),
        "by_kind": by_kind,
    })


def _held_out_auroc(held: OutOfSourceScores, combined: np.ndarray, member_names: tuple[str, ...]) -> dict:
    """AUROC on the held-out scores of the ensemble (as configured) and of each member alone, overall and per kind of
    input: the ensemble should rank at least as well as every member, for prompts and responses apart."""
    kinds = np.array([record.level for record in held.records])
    views = {"all": np.ones(len(kinds), dtype=bool), **{kind: kinds == kind for kind in sorted(set(kinds.tolist()))}}
    columns = {"ensemble": combined, **{f"member {name}": held.member_scores[:, index] for index, name in enumerate(member_names)}}
    return {view: {name: binary_metrics(held.labels[rows], scores[rows], 0.5).auroc for name, scores in columns.items()}
            for view, rows in views.items()}


def calibrate_by_kind(config_path: str | Path, data: str | Path, target_recall: float, **options) -> dict:
    """``calibrate`` for each kind of input in the validation data, on its own route and records; out-of-source
    scores are computed once for all kinds. The report holds each kind's under ``by_kind``."""
    if options.get("method") is not None:
        raise InputError("--by-kind chooses each kind's threshold on one scale: recalibrate (--method) without it first")
    validation = read_dataset(data, "validation")
    kinds = sorted({record.level for record in validation})
    if options.get("out_of_source") and options.get("held") is None:
        config = _config_without_bands(config_path)
        plans, _ = validate_plan(config)
        scorer = FeatureScorer(config, plans, options.get("cache_dir"), options.get("progress", False))
        options["held"] = _held_out_scores(scorer, plans, data, validation, options.get("source_folds", DEFAULT_SOURCE_FOLDS),
                                           options.get("refit", RefitOptions()), options.get("scores_out"))
    return {"config": str(config_path), "data": str(data), "target_recall": target_recall,
            "by_kind": {kind: calibrate(config_path, data, target_recall, kind=kind, **options) for kind in kinds}}


def _held_out_scores(scorer: FeatureScorer, plans, data, validation, folds: int | Sequence[Sequence[str]], refit: RefitOptions,
                     scores_out: str | Path | None) -> OutOfSourceScores:
    """Train + validation scored by members refitted without each record's source; written to ``scores_out`` if given."""
    held = out_of_source_scores(scorer, plans, read_dataset(data, "train"), validation, folds, refit)
    if scores_out is not None:
        save_out_of_source_scores(held, [plan.name for plan in plans], scores_out)
    return held


def _config_without_bands(config_path: str | Path) -> EnsembleConfig:
    """The config, with a cascade's bands left out (every route's): calibrate fits them anew at the threshold it picks."""
    path = Path(config_path)
    raw = read_yaml(path)
    routes = raw.get("by_kind") if isinstance(raw, dict) else None
    combiners = [raw.get("combiner") if isinstance(raw, dict) else None,
                 *[route.get("combiner") for route in (routes.values() if isinstance(routes, dict) else []) if isinstance(route, dict)]]
    for combiner in combiners:
        if isinstance(combiner, dict) and combiner.get("type") == "cascade" and isinstance(combiner.get("stages"), list):
            for stage in combiner["stages"]:
                if isinstance(stage, dict):
                    stage.pop("low", None)
                    stage.pop("high", None)
    if raw is None:
        raise ConfigError(f"{path}: empty config")
    return EnsembleConfig.from_dict(raw, base_dir=path.parent.resolve(), source=str(path))


def write_calibrated_config(config_path: str | Path, out: str | Path, threshold: float | None, calibration_path: str | Path | None,
                            cascade: dict | None = None, category_thresholds: dict[str, float] | None = None,
                            by_kind: dict[str, dict] | None = None) -> Path:
    """A copy of the config with ``threshold`` (and ``calibration``, a cascade's bands, ``category_thresholds``) set;
    paths stay relative to ``out``'s directory. ``by_kind`` (kind -> a ``calibrate(kind=...)`` report) writes each
    kind's threshold, and a cascade's bands into a copy of its route's combiner, under ``by_kind``."""
    config_path, out = Path(config_path), Path(out)
    raw = read_yaml(config_path)
    relative = _relative_paths(raw, config_path.resolve().parent)
    if relative and out.resolve().parent != config_path.resolve().parent:
        raise InputError(f"--write-config: write it next to {config_path}: its {relative[0]} is a relative path")
    if threshold is not None:
        raw["threshold"] = round(float(threshold), 6)
    if calibration_path is not None:
        raw["calibration"] = os.path.relpath(Path(calibration_path).resolve(), out.resolve().parent)
    if cascade is not None:
        _write_bands(raw["combiner"], cascade, raw["threshold"])
    for kind, report in (by_kind or {}).items():
        route = raw.setdefault("by_kind", {}).setdefault(kind, {})
        route["threshold"] = round(float(report["threshold"]), 6)
        if report["cascade"] is not None:
            if "combiner" not in route:  # the top level's, copied: these bands are this kind's alone
                route["combiner"] = copy.deepcopy(raw["combiner"])
                if raw.get("calibration") is not None:
                    route.setdefault("calibration", raw["calibration"])
            _write_bands(route["combiner"], report["cascade"], route["threshold"])
    if category_thresholds is not None:
        raw["category_thresholds"] = dict(category_thresholds)
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def _write_bands(combiner: dict, cascade: dict, threshold: float) -> None:
    for stage, band in zip(combiner["stages"], cascade["bands"]):
        for side in ("low", "high"):
            stage.pop(side, None)
            if band[side] is not None:
                # Rounding moved the threshold a little; a band never crosses it (that narrows the band).
                clip = min if side == "low" else max
                stage[side] = clip(float(band[side]), threshold)


def _relative_paths(raw: dict, base_dir: Path) -> list[str]:
    """Fields of a raw config that name a file relative to its directory (pkg: and hub ids are not)."""
    found = []
    for index, member in enumerate(raw.get("members") or []):
        for field in ("head", "model", "gguf_file"):
            values = member.get(field)
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, str) and not is_packaged(value) and not Path(value).expanduser().is_absolute() \
                        and is_local(value, base_dir):
                    found.append(f"members[{index}].{field}")
    for field, value in (("combiner.params", (raw.get("combiner") or {}).get("params")), ("calibration", raw.get("calibration"))):
        if isinstance(value, str) and not Path(value).expanduser().is_absolute():
            found.append(field)
    return found
