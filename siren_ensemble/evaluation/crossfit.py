"""Cross-fitted member scores over train + validation, and the stacker and threshold fitted on them.

A member head is fitted on train, so its scores on train are in-sample and too confident. Refitting its
MLP (safety neurons and layer weights kept) on k-1 folds of train + validation and scoring the k-th gives
every record a score from a model that never saw it: thousands of honest examples for a stacker, where
the validation split alone has hundreds. The stacker's threshold is chosen on its own out-of-fold
predictions, so it is not fitted on the data it is tuned on either.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..stacking import StackerParams, fit_stacker
from ..training.crossfit import cross_fitted_head_scores, out_of_fold
from ..training.mlp_search import MLPParams

if TYPE_CHECKING:
    from ..decision import DecisionPath

DEFAULT_FOLDS = 3


def cross_fitted_member_scores(member_x: Sequence[np.ndarray], labels: np.ndarray, groups: np.ndarray,
                               params: Sequence[MLPParams], folds: int = DEFAULT_FOLDS, seed: int = 0) -> np.ndarray:
    """Out-of-fold head scores, records x members (each member's MLP refitted per fold)."""
    return np.stack([cross_fitted_head_scores(x, labels, groups, member_params, folds, seed)
                     for x, member_params in zip(member_x, params)], axis=1)


def stacker_inputs(members: "DecisionPath", out_of_fold: np.ndarray, validation_scores: np.ndarray,
                   is_validation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a cross-fitted stacker is fitted on (calibrated out-of-fold member scores), and what it meets at
    run time for the same records: the final heads' calibrated scores on validation, where those heads are
    out-of-sample; on train, where they are not, the out-of-fold scores again."""
    fit_inputs = members.calibrated_members(out_of_fold)
    deploy_inputs = fit_inputs.copy()
    deploy_inputs[is_validation] = members.calibrated_members(validation_scores)
    return fit_inputs, deploy_inputs


@dataclass
class CrossFittedStacker:
    params: StackerParams
    #: Per record, the prediction of a stacker fitted without that record's fold (on ``deploy_inputs``).
    out_of_fold: np.ndarray


def cross_fitted_stacker(fit_inputs: np.ndarray, deploy_inputs: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                         names: Sequence[str], interactions: bool = False, folds: int = DEFAULT_FOLDS,
                         seed: int = 0) -> CrossFittedStacker:
    """A stacker fitted on ``fit_inputs`` (calibrated out-of-fold member scores), and its own out-of-fold
    predictions of ``deploy_inputs``: the member scores the stacker will meet for those records at run time
    (the final heads' on validation records; on train records, where the heads are in-sample, the
    out-of-fold ones)."""
    params = fit_stacker(fit_inputs, labels, names, seed, interactions)

    def fit_predict(fit_rows, held_out):
        return fit_stacker(fit_inputs[fit_rows], labels[fit_rows], names, seed, interactions).predict(deploy_inputs[held_out])

    return CrossFittedStacker(params, out_of_fold(labels, groups, fit_predict, folds, seed))


def fit_stacker_on_split(config_path, data, target_recall: float | None = None, interactions: bool = False,
                         folds: int = DEFAULT_FOLDS, seed: int = 0, cache_dir=None, progress: bool = False) -> tuple[StackerParams, dict]:
    """``fit-stacker``: a stacker on the config's members, fitted on cross-fitted scores over the split
    directory's train + validation; with ``target_recall`` its threshold is chosen on its out-of-fold
    predictions of the validation records and stored with it."""
    from ..config import load_config
    from ..data.records import read_dataset
    from ..decision import DecisionPath
    from ..errors import InputError
    from ..members import validate_plan
    from ..training.crossfit import record_groups
    from .metrics import binary_metrics, threshold_for_recall
    from .refit import member_mlp_params
    from .scoring import FeatureScorer

    config = load_config(config_path)
    plans, _ = validate_plan(config)
    scorer = FeatureScorer(config, plans, cache_dir, progress)
    train, validation = read_dataset(data, "train"), read_dataset(data, "validation")
    records = train + validation
    labels = np.array([record.label for record in records], dtype=int)
    if len(set(labels.tolist())) < 2:
        raise InputError(f"{data}: train + validation need both harmful (1) and benign (0) records to fit a stacker")
    member_x, validation_scores = [], []
    for plan in plans:
        # Per split, as train and evaluate extract them: the feature cache is keyed by the exact texts.
        train_features = scorer.layer_features(plan, train, description="train features")
        validation_features = scorer.layer_features(plan, validation, description="validation features")
        member_x.append(np.concatenate([scorer.stage2_inputs(plan, train_features), scorer.stage2_inputs(plan, validation_features)]))
        validation_scores.append(scorer.head_scores(plan, validation_features))
    groups = record_groups(records)
    oof = cross_fitted_member_scores(member_x, labels, groups, [member_mlp_params(plan.head) for plan in plans], folds, seed)
    is_validation = np.arange(len(records)) >= len(train)
    fit_inputs, deploy_inputs = stacker_inputs(DecisionPath.from_config(config, plans), oof,
                                               np.stack(validation_scores, axis=1), is_validation)
    fitted = cross_fitted_stacker(fit_inputs, deploy_inputs, labels, groups, [plan.name for plan in plans], interactions, folds, seed)
    params, validation_predictions = fitted.params, fitted.out_of_fold[is_validation]
    report = {"examples": int(len(labels)), "harmful": int(labels.sum()), "folds": folds, "cross_fitted": True}
    if target_recall is not None:
        threshold = threshold_for_recall(labels[is_validation], validation_predictions, target_recall)
        report["threshold"] = round(float(threshold), 6)
        report["validation_out_of_fold"] = binary_metrics(labels[is_validation], validation_predictions, threshold).to_dict()
    return replace(params, fitted_on=params.fitted_on | report, threshold=report.get("threshold")), report
