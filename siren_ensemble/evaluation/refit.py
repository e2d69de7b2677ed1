"""Refitting a trained head's MLP on other data (stage 2 only), for leave-one-source-out tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..head import SirenHead
from ..training.mlp_search import FitOptions, MLPParams, fit_mlp, predict
from ..training.pipeline import REPORT_FILE

#: Used for heads trained elsewhere, whose directory has no training report.
FALLBACK_LEARNING_RATE, FALLBACK_WEIGHT_DECAY, FALLBACK_EPOCHS = 1e-3, 1e-4, 30


def member_mlp_params(head: SirenHead) -> MLPParams:
    """The MLP hyper-parameters the head was trained with, from its training report when it has one."""
    report_path = Path(head.source) / REPORT_FILE
    if report_path.is_file():
        return MLPParams.from_dict(json.loads(report_path.read_text())["mlp"])
    spec = head.config.mlp
    return MLPParams(tuple(spec.layer_dims), tuple(spec.dropout_rates), FALLBACK_LEARNING_RATE, FALLBACK_WEIGHT_DECAY,
                     FALLBACK_EPOCHS)


def refit_scores(train_x: np.ndarray, train_y: np.ndarray, params: MLPParams, score_on: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    mlp, _ = fit_mlp(train_x, train_y, params, FitOptions(seed=seed))
    return [predict(mlp, x) for x in score_on]
