"""``siren-ensemble evaluate``: every member, the ensemble under every combiner, and the baselines,
per source and overall, on one split and in a leave-one-source-out table.

Leave-one-source-out: for each source, every member's MLP is refitted on the training split
without that source (its safety neurons and layer weights are kept from the full training run;
only stage 2 is refitted), thresholds are chosen on the validation split without that source, and
all records of that source, from every split, are scored. Baselines are refitted the same way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import plugins
from ..combiners import MemberView
from ..config import load_config
from ..data.records import SPLITS, SafetyRecord, read_dataset
from ..errors import InputError
from ..features import weighted_neuron_features
from ..members import MemberPlan, validate_plan
from ..stacking import fit_stacker
from ..training.pipeline import REPORT_FILE
from . import baselines, plots
from .metrics import binary_metrics, threshold_for_recall
from .refit import member_mlp_params, refit_scores
from .scoring import FeatureScorer

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
ALTERNATIVE_COMBINERS = (("mean", {}), ("weighted_mean", {}), ("max", {}), ("vote", {"rule": "any"}), ("vote", {"rule": "majority"}))


@dataclass(frozen=True)
class EvaluateOptions:
    split: str = "test"
    target_recall: float | None = None
    baselines: bool = True
    leave_one_source_out: bool = True
    seed: int = 0
    #: Misclassified records to show per source and kind (missed harmful, flagged benign).
    examples: int = 0


@dataclass
class Scored:
    scores: np.ndarray
    threshold: float


@dataclass
class _SplitData:
    records: list[SafetyRecord]
    labels: np.ndarray
    member_x: list[np.ndarray]  # per member: alpha-weighted safety-neuron features
    member_scores: np.ndarray  # records x members
    last_layer: list[np.ndarray]  # per member: mean-pooled last layer

    def subset(self, rows: np.ndarray) -> "_SplitData":
        return _SplitData([self.records[i] for i in rows], self.labels[rows], [x[rows] for x in self.member_x],
                          self.member_scores[rows], [x[rows] for x in self.last_layer])


def evaluate(config_path: str | Path, data: str | Path, options: EvaluateOptions = EvaluateOptions(),
             cache_dir: str | Path | None = None, progress: bool = False, plots_dir: str | Path | None = None) -> dict:
    config = load_config(config_path)
    plans, combiner = validate_plan(config)
    scorer = FeatureScorer(config, plans, cache_dir, progress)
    is_split_dir = Path(data).is_dir()
    logger.info("scoring %s with %d members (features from the cache when present)", data, len(plans))
    # Train features are only needed to fit baselines and leave-one-source-out refits.
    wanted = {options.split, "validation"}
    if options.baselines:
        wanted.add("train")
    if options.leave_one_source_out:
        wanted.update(SPLITS)
    splits = {name: _load(scorer, plans, data, name) for name in SPLITS if is_split_dir and name in wanted}
    evaluated = splits[options.split] if is_split_dir else _load(scorer, plans, data, None)
    validation = splits.get("validation")
    train = splits.get("train")
    if options.target_recall is not None and validation is None:
        raise InputError(f"{data}: --target-recall picks thresholds on a validation split; pass a split directory")

    views = [MemberView(plan.name, plan.weight, plan.threshold) for plan in plans]
    config_combiner = (config.combiner.type, config.combiner.options, config.threshold)
    outputs = _scorer_outputs(evaluated.member_scores, validation, views, options.target_recall, config_combiner, config.base_dir)
    if options.baselines and train is not None:
        outputs.update(_baseline_outputs(plans, train, validation, evaluated, options.target_recall))

    report = {
        "config": str(config_path), "data": str(data), "split": options.split if is_split_dir else None,
        "target_recall": options.target_recall,
        "scorers": {name: _metrics_by_source(evaluated, scored) for name, scored in outputs.items()},
    }
    if options.examples:
        name = _shown_scorer(outputs)
        report["misclassified"] = {"scorer": name, **_misclassified(evaluated.records, outputs[name], options.examples)}
    if plots_dir is not None:
        report["plots"] = [str(path) for path in _plot(plans, evaluated, outputs, plots_dir, report["split"] or str(data))]
    if options.leave_one_source_out and train is not None:
        logger.info("leave-one-source-out: refitting members and baselines without each source")
        report["leave_one_source_out"] = _leave_one_source_out(plans, splits, views, options, config_combiner, config.base_dir)
    return report


def _plot(plans, evaluated: _SplitData, outputs: dict[str, Scored], directory, title: str) -> list[Path]:
    written = []
    if len(set(evaluated.labels.tolist())) == 2:
        written += plots.curves(evaluated.labels, {name: scored.scores for name, scored in outputs.items()}, directory, title)
    reports = {plan.name: json.loads((Path(plan.head.source) / REPORT_FILE).read_text())
               for plan in plans if (Path(plan.head.source) / REPORT_FILE).is_file()}
    if reports:
        written.append(plots.layer_f1(reports, Path(directory) / "layer_f1.png"))
    return written


def _load(scorer: FeatureScorer, plans: list[MemberPlan], data, split: str | None) -> _SplitData:
    records = read_dataset(data, split or "test")
    columns, member_x, last_layer = [], [], []
    for plan in plans:
        features = scorer.layer_features(plan, records, description=f"{split or 'data'} features")
        head = plan.head.config
        member_x.append(weighted_neuron_features(features, head.neurons(), {l: head.layer_weight(l) for l in head.layers}))
        last_layer.append(features[max(features)])
        columns.append(scorer.head_scores(plan, features))
    labels = np.array([record.label for record in records], dtype=int)
    return _SplitData(records, labels, member_x, np.stack(columns, axis=1), last_layer)


def _threshold(validation_scores: np.ndarray | None, validation_labels, target_recall, default: float) -> float:
    if target_recall is None or validation_scores is None:
        return default
    return threshold_for_recall(validation_labels, validation_scores, target_recall)


def _combiner(type_name: str, options: dict, views: Sequence[MemberView], base_dir):
    registration = plugins.combiners().get(type_name)
    return registration.cls(registration.cls.Options.model_validate(options), views, base_dir)


def _scorer_outputs(member_scores: np.ndarray, validation: _SplitData | None, views: list[MemberView],
                    target_recall: float | None, config_combiner, base_dir) -> dict[str, Scored]:
    """Scores and thresholds of each member and of the ensemble under each combiner."""
    val_scores = validation.member_scores if validation is not None else None
    val_labels = validation.labels if validation is not None else None
    outputs: dict[str, Scored] = {}
    tuned_views = []
    for column, view in enumerate(views):
        threshold = _threshold(None if val_scores is None else val_scores[:, column],
                               val_labels, target_recall, view.threshold)
        outputs[f"member {view.name}"] = Scored(member_scores[:, column], threshold)
        tuned_views.append(replace(view, threshold=threshold))

    type_name, options, config_threshold = config_combiner
    candidates = [("ensemble (config)", type_name, options)] + [
        (f"ensemble {name}" + (f" {opts['rule']}" if opts else ""), name, opts) for name, opts in ALTERNATIVE_COMBINERS
    ]
    if len(views) > 1:
        for label, name, opts in candidates:
            combiner = _combiner(name, opts, tuned_views, base_dir)
            implied = combiner.default_threshold()
            default = config_threshold if (label == "ensemble (config)" and config_threshold is not None) else (
                implied if implied is not None else DEFAULT_THRESHOLD)
            val_combined = combiner.combine(val_scores) if val_scores is not None else None
            threshold = default if name == "vote" else _threshold(val_combined, val_labels, target_recall, default)
            outputs[label] = Scored(combiner.combine(member_scores), threshold)
        if val_scores is not None and len(set(val_labels.tolist())) == 2:
            stacker = fit_stacker(val_scores, val_labels.tolist(), [view.name for view in views])
            # Fitted on validation: its own threshold on validation would be in-sample, so 0.5 unless a recall target asks.
            threshold = _threshold(stacker.predict(val_scores), val_labels, target_recall, DEFAULT_THRESHOLD)
            outputs["ensemble stacking (fit on validation)"] = Scored(stacker.predict(member_scores), threshold)
    return outputs


def _baseline_outputs(plans, train: _SplitData, validation: _SplitData, evaluated: _SplitData, target_recall) -> dict[str, Scored]:
    outputs = {}
    seen = set()
    for index, plan in enumerate(plans):
        if plan.spec in seen:
            continue
        seen.add(plan.spec)
        model = baselines.last_layer_probe(train.last_layer[index], train.labels, validation.last_layer[index], validation.labels)
        val_scores = baselines.harmful_probability(model, validation.last_layer[index])
        outputs[f"baseline last-layer probe ({plan.name})"] = Scored(
            baselines.harmful_probability(model, evaluated.last_layer[index]),
            _threshold(val_scores, validation.labels, target_recall, DEFAULT_THRESHOLD))
    texts = lambda split: [record.scored_text for record in split.records]  # noqa: E731
    model = baselines.tfidf_classifier(texts(train), train.labels, texts(validation), validation.labels)
    val_scores = baselines.harmful_probability(model, texts(validation))
    outputs["baseline tf-idf"] = Scored(baselines.harmful_probability(model, texts(evaluated)),
                                         _threshold(val_scores, validation.labels, target_recall, DEFAULT_THRESHOLD))
    return outputs


def _metrics_by_source(data: _SplitData, scored: Scored) -> dict:
    sources = np.array([record.source for record in data.records])
    per_source = {
        source: binary_metrics(data.labels[sources == source], scored.scores[sources == source], scored.threshold).to_dict()
        for source in sorted(set(sources.tolist()))
    }
    return {"threshold": scored.threshold,
            "overall": binary_metrics(data.labels, scored.scores, scored.threshold).to_dict(), "per_source": per_source}


def _leave_one_source_out(plans, splits: dict[str, _SplitData], views, options: EvaluateOptions, config_combiner, base_dir) -> dict:
    train, validation = splits["train"], splits["validation"]
    everything = _concat([splits[name] for name in SPLITS])
    params = [member_mlp_params(plan.head) for plan in plans]
    table, examples = {}, {}
    for source in sorted({record.source for record in everything.records}):
        keep_train = _rows(train, source, keep=False)
        keep_val = _rows(validation, source, keep=False)
        held_out = everything.subset(_rows(everything, source, keep=True))
        fit, tune = train.subset(keep_train), validation.subset(keep_val)
        if len(set(fit.labels.tolist())) < 2 or len(set(tune.labels.tolist())) < 2:
            continue  # without this source one class is missing: nothing to fit
        for column in range(len(plans)):
            tune.member_scores[:, column], held_out.member_scores[:, column] = refit_scores(
                fit.member_x[column], fit.labels, params[column], [tune.member_x[column], held_out.member_x[column]], options.seed)
        outputs = _scorer_outputs(held_out.member_scores, tune, views, options.target_recall, config_combiner, base_dir)
        if options.baselines:
            outputs.update(_baseline_outputs(plans, fit, tune, held_out, options.target_recall))
        table[source] = {name: binary_metrics(held_out.labels, scored.scores, scored.threshold).to_dict()
                         for name, scored in outputs.items()}
        if options.examples:
            examples[source] = _misclassified(held_out.records, outputs[_shown_scorer(outputs)], options.examples)
    if examples:
        table["_misclassified"] = examples
    return table


def _shown_scorer(outputs: dict[str, Scored]) -> str:
    return "ensemble (config)" if "ensemble (config)" in outputs else next(iter(outputs))


def _misclassified(records: Sequence[SafetyRecord], scored: Scored, per_source: int) -> dict:
    """The most confidently wrong records of each source: harmful ones missed, benign ones flagged."""
    found: dict[str, dict[str, list]] = {"missed_harmful": {}, "flagged_benign": {}}
    order = np.argsort(scored.scores)
    for kind, rows in (("missed_harmful", order), ("flagged_benign", order[::-1])):
        for row in rows:
            record, score = records[row], float(scored.scores[row])
            wrong = (record.label == 1 and score < scored.threshold) if kind == "missed_harmful" else (
                record.label == 0 and score >= scored.threshold)
            shown = found[kind].setdefault(record.source, []) if wrong else None
            if shown is not None and len(shown) < per_source:
                shown.append({"score": round(score, 4), "text": record.scored_text})
    return found


def _rows(data: _SplitData, source: str, keep: bool) -> np.ndarray:
    return np.array([i for i, record in enumerate(data.records) if (record.source == source) == keep], dtype=int)


def _concat(parts: list[_SplitData]) -> _SplitData:
    return _SplitData(
        [record for part in parts for record in part.records], np.concatenate([part.labels for part in parts]),
        [np.concatenate(xs) for xs in zip(*(part.member_x for part in parts))],
        np.concatenate([part.member_scores for part in parts]),
        [np.concatenate(xs) for xs in zip(*(part.last_layer for part in parts))],
    )
