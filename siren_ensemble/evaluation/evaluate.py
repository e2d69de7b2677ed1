"""``siren-ensemble evaluate``: every member, the ensemble under every combiner, and the baselines,
per source and overall, on one split and in a leave-one-source-out table.

Every ensemble row goes through the same ``DecisionPath`` as the runtime (member calibration,
combiner, the config's calibration and threshold). Stackers are fitted on cross-fitted member scores
over train + validation, and their thresholds chosen on their own out-of-fold predictions
(``crossfit.py``).

Leave-one-source-out: for each source, every member's MLP is refitted on the training split
without that source (its safety neurons and layer weights are kept from the full training run;
only stage 2 is refitted), thresholds are chosen on the validation split without that source, and
all records of that source, from every split, are scored. Baselines are refitted the same way;
stackers are refitted on the cross-fitted scores of the other sources' records (those scores come
from fold models that did see the source: a small leak, named in docs/evaluation.md).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from joblib import Parallel, delayed

from ..config import CombinerConfig, EnsembleConfig, load_config
from ..data.records import SPLITS, SafetyRecord, read_dataset
from ..decision import DEFAULT_THRESHOLD, DecisionPath
from ..errors import InputError
from ..members import MemberPlan, validate_plan
from ..routing import Routes
from .languages import language_report
from ..training.crossfit import record_groups
from ..training.pipeline import REPORT_FILE
from . import baselines, plots
from .categories import evaluate_categories
from .crossfit import cross_fitted_member_scores, cross_fitted_stacker, stacker_inputs
from .metrics import ROUTED_THRESHOLD, binary_metrics, onto_shared_scale, threshold_for_recall
from .refit import member_mlp_params, refit_scores
from .scoring import FeatureScorer

logger = logging.getLogger(__name__)

ALTERNATIVE_COMBINERS = (("mean", {}), ("weighted_mean", {}), ("logit_mean", {}), ("max", {}), ("vote", {"rule": "any"}),
                         ("vote", {"rule": "majority"}))
#: The cascade config's row with every member run (its last stage for every text).
EVERY_MEMBER_ROW = "ensemble (config), every member"
#: Stackers fitted on cross-fitted member scores: (row label, with pairwise logit interactions).
CROSS_FITTED_STACKERS = (("ensemble stacking (cross-fitted)", False), ("ensemble stacking+interactions (cross-fitted)", True))


@dataclass(frozen=True)
class EvaluateOptions:
    split: str = "test"
    target_recall: float | None = None
    baselines: bool = True
    leave_one_source_out: bool = True
    seed: int = 0
    #: Misclassified records to show per source and kind (missed harmful, flagged benign).
    examples: int = 0
    #: Put every scorer's score of every evaluated record in the report (``record_scores``).
    record_scores: bool = False
    #: Cross-fitted stackers (their member scores refit each member's MLP once per fold).
    stackers: bool = True
    #: Folds of the cross-fitted member scores that stackers are fitted on.
    folds: int = 3
    #: Processes for the leave-one-source-out rows (the table does not depend on it).
    jobs: int = 1


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
    best_layer: list[np.ndarray]  # per member: mean-pooled layer of its best stage-1 probe

    def subset(self, rows: np.ndarray) -> "_SplitData":
        return _SplitData([self.records[i] for i in rows], self.labels[rows], [x[rows] for x in self.member_x],
                          self.member_scores[rows], [x[rows] for x in self.last_layer], [x[rows] for x in self.best_layer])


@dataclass
class _CrossFitted:
    """Out-of-fold member scores over train + validation (what stackers are fitted on)."""

    scores: np.ndarray  # records x members, raw head scores from fold refits
    labels: np.ndarray
    groups: np.ndarray
    sources: np.ndarray
    is_validation: np.ndarray

    def without(self, source: str) -> "_CrossFitted":
        keep = self.sources != source
        return _CrossFitted(self.scores[keep], self.labels[keep], self.groups[keep], self.sources[keep], self.is_validation[keep])


def evaluate(config_path: str | Path, data: str | Path, options: EvaluateOptions = EvaluateOptions(),
             cache_dir: str | Path | None = None, progress: bool = False, plots_dir: str | Path | None = None) -> dict:
    config = load_config(config_path)
    plans, _ = validate_plan(config)
    scorer = FeatureScorer(config, plans, cache_dir, progress)
    is_split_dir = Path(data).is_dir()
    logger.info("scoring %s with %d members (features from the cache when present)", data, len(plans))
    # Train features are only needed to fit baselines, cross-fitted stackers and leave-one-source-out refits.
    wanted = {options.split, "validation"}
    if options.baselines or (options.stackers and len(plans) > 1):
        wanted.add("train")
    if options.leave_one_source_out:
        wanted.update(SPLITS)
    splits = {name: _load(scorer, plans, data, name) for name in SPLITS if is_split_dir and name in wanted}
    evaluated = splits[options.split] if is_split_dir else _load(scorer, plans, data, None)
    validation = splits.get("validation")
    train = splits.get("train")
    if options.target_recall is not None and validation is None:
        raise InputError(f"{data}: --target-recall picks thresholds on a validation split; pass a split directory")

    cross_fitted = None
    if options.stackers and train is not None and validation is not None and len(plans) > 1:
        logger.info("cross-fitting member scores over train + validation (%d folds) for the stackers", options.folds)
        cross_fitted = _cross_fit(plans, train, validation, options)
    outputs = _scorer_outputs(config, plans, evaluated, validation, options, cross_fitted)
    if options.baselines and train is not None:
        outputs.update(_baseline_outputs(plans, train, validation, evaluated, options.target_recall))
    own = DecisionPath.from_config(config, plans)

    report = {
        "config": str(config_path), "data": str(data), "split": options.split if is_split_dir else None,
        "target_recall": options.target_recall,
        "scorers": {name: _metrics_by_source(evaluated, scored) for name, scored in outputs.items()},
    }
    report["by_kind"] = _metrics_by_kind(evaluated, outputs)
    if own.staged and len(plans) > 1 and not config.by_kind:
        report["cascade"] = _cascade_report(own, config, evaluated, outputs)
    configured = outputs["ensemble (config)" if len(plans) > 1 else f"member {plans[0].name}"]
    report["languages"] = language_report(config.languages, evaluated.records, evaluated.labels, configured.scores,
                                          configured.threshold)
    if options.record_scores:
        report["record_scores"] = {name: scored.scores.tolist() for name, scored in outputs.items()}
    if options.examples:
        name = _shown_scorer(outputs)
        report["misclassified"] = {"scorer": name, **_misclassified(evaluated.records, outputs[name], options.examples)}
    if plots_dir is not None:
        report["plots"] = [str(path) for path in _plot(plans, evaluated, outputs, plots_dir, report["split"] or str(data))]
    if options.leave_one_source_out and train is not None:
        logger.info("leave-one-source-out: refitting members and baselines without each source")
        report["leave_one_source_out"] = _leave_one_source_out(config, plans, splits, options, cross_fitted)
        if any(record.language for split in splits.values() for record in split.records):
            logger.info("leave-one-language-out: refitting members without each translated language")
            # Stackers are left out: their cross-fitted scores saw every language.
            report["leave_one_language_out"] = _leave_one_source_out(config, plans, splits, replace(options, stackers=False),
                                                                     None, group_of=_language_of)
    if any(plan.categories is not None for plan in plans):
        logger.info("harm categories: per-category metrics%s", " and leave-one-source-out refits" if train is not None else "")
        everything = _concat([splits[name] for name in SPLITS]) if options.leave_one_source_out and train is not None else None
        loso = None if everything is None else (train.records, train.member_x, everything.records, everything.member_x)
        report["categories"] = evaluate_categories(config, plans, evaluated.records, evaluated.member_x, report["split"] or str(data),
                                                   plots_dir, loso, options.seed, options.jobs)
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
    columns, member_x, last_layer, best_layer = [], [], [], []
    for plan in plans:
        features = scorer.layer_features(plan, records, description=f"{split or 'data'} features")
        member_x.append(scorer.stage2_inputs(plan, features))
        last_layer.append(features[max(features)])
        best_layer.append(features[best_probe_layer(plan)])
        columns.append(scorer.head_scores(plan, features))
    labels = np.array([record.label for record in records], dtype=int)
    return _SplitData(records, labels, member_x, np.stack(columns, axis=1), last_layer, best_layer)


def best_probe_layer(plan: MemberPlan) -> int:
    """The layer whose stage-1 probe scored best on validation (its training report), else the highest layer weight."""
    report_path = Path(plan.head.source) / REPORT_FILE
    if report_path.is_file():
        layers = json.loads(report_path.read_text())["layers"]
        return max(layers, key=lambda entry: (entry["validation_f1"], entry.get("validation_auroc", 0.0)))["layer"]
    head = plan.head.config
    return max(head.layers, key=head.layer_weight)


def _threshold(validation_scores: np.ndarray | None, validation_labels, target_recall, default: float) -> float:
    if target_recall is None or validation_scores is None:
        return default
    return threshold_for_recall(validation_labels, validation_scores, target_recall)


def _scorer_outputs(config: EnsembleConfig, plans: list[MemberPlan], evaluated: _SplitData, validation: _SplitData | None,
                    options: EvaluateOptions, cross_fitted: _CrossFitted | None) -> dict[str, Scored]:
    """Scores and thresholds of each member and of the ensemble under each combiner, all through the runtime's path."""
    target_recall = options.target_recall
    val_scores = validation.member_scores if validation is not None else None
    val_labels = validation.labels if validation is not None else None
    outputs: dict[str, Scored] = {}
    for column, plan in enumerate(plans):
        threshold = _threshold(None if val_scores is None else val_scores[:, column], val_labels, target_recall, plan.threshold)
        outputs[f"member {plan.name}"] = Scored(evaluated.member_scores[:, column], threshold)
    if len(plans) < 2:
        return outputs

    own = DecisionPath.from_config(config, plans)
    # Vote members vote with thresholds on the calibrated scale, chosen like every other threshold.
    tuned = None
    if target_recall is not None and val_scores is not None:
        calibrated = own.calibrated_members(val_scores)
        tuned = [threshold_for_recall(val_labels, calibrated[:, column], target_recall) for column in range(len(plans))]
    configured = DecisionPath.from_config(config, plans, thresholds=tuned)
    paths = [] if config.by_kind else [("ensemble (config)", configured)]
    paths += [
        (f"ensemble {name}" + (f" {opts['rule']}" if opts else ""),
         DecisionPath.from_config(config, plans, CombinerConfig(type=name, **opts), thresholds=tuned))
        for name, opts in ALTERNATIVE_COMBINERS
    ]
    if configured.staged and not config.by_kind:  # the cascade beside what it saves compute against
        paths.insert(1, (EVERY_MEMBER_ROW, configured.without_bands()))
    if config.by_kind:
        outputs["ensemble (config)"] = _routed_output(config, plans, evaluated, validation, target_recall)
    for label, path in paths:
        if path.combiner.name == "vote":
            threshold = path.threshold  # the rule decides
        else:
            threshold = _threshold(None if val_scores is None else path.scores(val_scores), val_labels, target_recall, path.threshold)
        outputs[label] = Scored(path.scores(evaluated.member_scores), threshold)
    if cross_fitted is not None and validation is not None:
        outputs.update(_stacker_outputs(own, plans, evaluated, validation, options, cross_fitted))
    return outputs


def _routed_output(config: EnsembleConfig, plans: list[MemberPlan], evaluated: _SplitData, validation: _SplitData | None,
                   target_recall: float | None) -> Scored:
    """A ``by_kind`` config's row: each record scored by its kind's route and compared with that route's threshold
    (chosen on the kind's validation records with a target recall). The scores are mapped onto one scale on which every
    route's threshold is ``ROUTED_THRESHOLD``, monotonically per kind: verdicts, and AUROC within a kind, are the
    routes' own."""
    routes = Routes.from_config(config, plans)
    scores = np.zeros(len(evaluated.labels))
    for kind in sorted({record.level for record in evaluated.records}):
        path = routes.path(kind)
        rows = np.array([record.level == kind for record in evaluated.records])
        threshold = path.threshold
        if validation is not None and target_recall is not None:
            of_kind = np.array([record.level == kind for record in validation.records])
            if validation.labels[of_kind].sum():
                threshold = threshold_for_recall(validation.labels[of_kind], path.scores(validation.member_scores[of_kind]),
                                                 target_recall)
        scores[rows] = onto_shared_scale(path.scores(evaluated.member_scores[rows]), threshold)
    return Scored(scores, ROUTED_THRESHOLD)


def _metrics_by_kind(evaluated: _SplitData, outputs: dict[str, Scored]) -> dict:
    """Every scorer's metrics on prompts alone and on prompt+response records alone (at its own threshold)."""
    kinds = np.array([record.level for record in evaluated.records])
    return {kind: {name: binary_metrics(evaluated.labels[kinds == kind], scored.scores[kinds == kind], scored.threshold).to_dict()
                   for name, scored in outputs.items()}
            for kind in sorted(set(kinds.tolist()))}


def _cascade_report(path: DecisionPath, config: EnsembleConfig, evaluated: _SplitData, outputs: dict[str, Scored]) -> dict:
    """Share of texts each stage decided, and how the cascade's verdicts compare with every member's at its threshold."""
    staged = path.staged_scores(evaluated.member_scores)
    cascade, every = outputs["ensemble (config)"], outputs[EVERY_MEMBER_ROW]
    verdicts = cascade.scores >= cascade.threshold
    reference = every.scores >= cascade.threshold
    harmful = evaluated.labels == 1
    stages = config.combiner_options().stages
    return {
        "stages": [list(stage.members) for stage in stages],
        "bands": [{"low": stage.low, "high": stage.high} for stage in stages],
        "decided_share": [round(float((staged.decided_by == index).mean()), 6) for index in range(len(stages))],
        "agreement_with_every_member": round(float((verdicts == reference).mean()), 6),
        "recall": round(float(verdicts[harmful].mean()), 6) if harmful.any() else None,
        "recall_every_member": round(float(reference[harmful].mean()), 6) if harmful.any() else None,
    }


def _cross_fit(plans: list[MemberPlan], train: _SplitData, validation: _SplitData, options: EvaluateOptions) -> _CrossFitted:
    both = _concat([train, validation])
    groups = record_groups(both.records)
    scores = cross_fitted_member_scores(both.member_x, both.labels, groups, [member_mlp_params(plan.head) for plan in plans],
                                        options.folds, options.seed)
    is_validation = np.arange(len(both.labels)) >= len(train.labels)
    return _CrossFitted(scores, both.labels, groups, np.array([record.source for record in both.records]), is_validation)


def _stacker_outputs(own: DecisionPath, plans: list[MemberPlan], evaluated: _SplitData, validation: _SplitData,
                     options: EvaluateOptions, cross_fitted: _CrossFitted) -> dict[str, Scored]:
    """Stackers fitted on calibrated cross-fitted scores; thresholds from their out-of-fold predictions of validation."""
    fit_inputs, deploy_inputs = stacker_inputs(own, cross_fitted.scores, validation.member_scores, cross_fitted.is_validation)
    names = [plan.name for plan in plans]
    outputs = {}
    for label, interactions in CROSS_FITTED_STACKERS:
        fitted = cross_fitted_stacker(fit_inputs, deploy_inputs, cross_fitted.labels, cross_fitted.groups, names,
                                      interactions, options.folds, options.seed)
        validation_predictions = fitted.out_of_fold[cross_fitted.is_validation]
        threshold = _threshold(validation_predictions, validation.labels, options.target_recall, DEFAULT_THRESHOLD)
        # On the validation split itself, each record is scored by a stacker that did not see it.
        scores = validation_predictions if evaluated is validation else fitted.params.predict(own.calibrated_members(evaluated.member_scores))
        outputs[label] = Scored(scores, threshold)
    return outputs


def _baseline_outputs(plans, train: _SplitData, validation: _SplitData, evaluated: _SplitData, target_recall) -> dict[str, Scored]:
    outputs = {}
    seen = set()
    for index, plan in enumerate(plans):
        # Each head against the linear probe of the layer it found best, and of the last layer (the terminal guard).
        probes = [(f"baseline best-layer probe ({plan.name}, layer {best_probe_layer(plan)})", "best_layer")]
        if plan.spec not in seen:
            probes.append((f"baseline last-layer probe ({plan.name})", "last_layer"))
        seen.add(plan.spec)
        for label, field in probes:
            train_x, val_x, x = (getattr(split, field)[index] for split in (train, validation, evaluated))
            model = baselines.last_layer_probe(train_x, train.labels, val_x, validation.labels)
            outputs[label] = Scored(baselines.harmful_probability(model, x), _threshold(
                baselines.harmful_probability(model, val_x), validation.labels, target_recall, DEFAULT_THRESHOLD))
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


def _source_of(record: SafetyRecord) -> str:
    return record.source


def _language_of(record: SafetyRecord) -> str:
    return record.language or "en"


def _leave_one_source_out(config: EnsembleConfig, plans, splits: dict[str, _SplitData], options: EvaluateOptions,
                          cross_fitted: _CrossFitted | None, group_of=_source_of) -> dict:
    """Per group (a source; with ``group_of=_language_of``, a translated language), its records from every split scored
    by members refitted without them."""
    train, validation = splits["train"], splits["validation"]
    everything = _concat([splits[name] for name in SPLITS])
    params = [member_mlp_params(plan.head) for plan in plans]
    groups = sorted({group_of(record) for record in everything.records})
    if group_of is _language_of:  # the translations' transfer; English is what every language was translated from
        groups = [group for group in groups if group != "en"]
    # Groups are independent and every fit is seeded, so processes side by side give the same table.
    held_out = Parallel(n_jobs=options.jobs)(
        delayed(_held_out_source)(group, config, plans, train, validation, everything, params, options, cross_fitted, group_of)
        for group in groups
    )
    table = {source: metrics for source, metrics, _ in held_out if metrics is not None}
    examples = {source: shown for source, metrics, shown in held_out if metrics is not None and shown is not None}
    if examples:
        table["_misclassified"] = examples
    return table


def _held_out_source(source: str, config: EnsembleConfig, plans, train: _SplitData, validation: _SplitData,
                     everything: _SplitData, params, options: EvaluateOptions, cross_fitted: _CrossFitted | None,
                     group_of=_source_of):
    """One leave-one-source-out row: (source, metrics by scorer or None when a class is missing, misclassified examples)."""
    held_out = everything.subset(_rows(everything, source, keep=True, group_of=group_of))
    fit = train.subset(_rows(train, source, keep=False, group_of=group_of))
    tune = validation.subset(_rows(validation, source, keep=False, group_of=group_of))
    if len(set(fit.labels.tolist())) < 2 or len(set(tune.labels.tolist())) < 2:
        return source, None, None  # without this source one class is missing: nothing to fit
    for column in range(len(plans)):
        tune.member_scores[:, column], held_out.member_scores[:, column] = refit_scores(
            fit.member_x[column], fit.labels, params[column], [tune.member_x[column], held_out.member_x[column]], options.seed)
    others = cross_fitted.without(source) if cross_fitted is not None and group_of is _source_of else None
    outputs = _scorer_outputs(config, plans, held_out, tune, options, others)
    if options.baselines:
        outputs.update(_baseline_outputs(plans, fit, tune, held_out, options.target_recall))
    metrics = {name: binary_metrics(held_out.labels, scored.scores, scored.threshold).to_dict() for name, scored in outputs.items()}
    shown = _misclassified(held_out.records, outputs[_shown_scorer(outputs)], options.examples) if options.examples else None
    return source, metrics, shown


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


def _rows(data: _SplitData, group: str, keep: bool, group_of=_source_of) -> np.ndarray:
    return np.array([i for i, record in enumerate(data.records) if (group_of(record) == group) == keep], dtype=int)


def _concat(parts: list[_SplitData]) -> _SplitData:
    return _SplitData(
        [record for part in parts for record in part.records], np.concatenate([part.labels for part in parts]),
        [np.concatenate(xs) for xs in zip(*(part.member_x for part in parts))],
        np.concatenate([part.member_scores for part in parts]),
        [np.concatenate(xs) for xs in zip(*(part.last_layer for part in parts))],
        [np.concatenate(xs) for xs in zip(*(part.best_layer for part in parts))],
    )
