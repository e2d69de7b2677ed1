"""Cross-fitting: out-of-fold predictions over a labelled set, folds split by group.

Whatever is fitted on these predictions (a member's calibration, a stacker, a threshold) sees every
record scored by a model that was not fitted on it, so it learns how the models behave on new text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ..data.records import SafetyRecord

if TYPE_CHECKING:
    from .mlp_search import MLPParams

#: fit_predict(train_rows, predict_rows) -> one prediction per row of predict_rows.
FitPredict = Callable[[np.ndarray, np.ndarray], np.ndarray]


def record_groups(records: Sequence[SafetyRecord]) -> np.ndarray:
    """Each record's leakage group (near-duplicates share one); a record without one is its own group."""
    return np.array([record.group or f"{record.source}:{index}" for index, record in enumerate(records)])


def fold_rows(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) per fold: stratified by label, no group on both sides."""
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(fit, held_out) for fit, held_out in splitter.split(np.zeros(len(labels)), labels, groups)]


def out_of_fold(labels: np.ndarray, groups: np.ndarray, fit_predict: FitPredict, folds: int = 3, seed: int = 0) -> np.ndarray:
    """One prediction per record, each from the fold model that did not see it."""
    predictions = np.full(len(labels), np.nan)
    for fit, held_out in fold_rows(np.asarray(labels), np.asarray(groups), folds, seed):
        predictions[held_out] = fit_predict(fit, held_out)
    return predictions


def cross_fitted_head_scores(x: np.ndarray, labels: np.ndarray, groups: np.ndarray, params: "MLPParams", folds: int = 3,
                             seed: int = 0) -> np.ndarray:
    """Out-of-fold scores of a head's stage 2 (its MLP refitted per fold on ``x``, its weighted safety neurons)."""
    from .mlp_search import FitOptions, fit_mlp, predict  # mlp_search takes its folds from here

    def fit_predict(fit_rows, held_out):
        mlp, _ = fit_mlp(x[fit_rows], labels[fit_rows], params, FitOptions(seed=seed))
        return predict(mlp, x[held_out])

    return out_of_fold(labels, groups, fit_predict, folds, seed)
