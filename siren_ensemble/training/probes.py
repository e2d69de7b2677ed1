"""Stage 1: one L1-regularised linear probe per layer; its weights pick the layer's safety neurons.

Features are standardised before the probe so that |weight| compares neurons on one scale. C runs
over a grid from strong to weak regularisation and stops early once validation F1 has not improved
for ``patience`` steps; the best C (the sparser one on ties) is kept.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from ..features import layer_alphas, select_neurons

DEFAULT_C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
PROBE_TOLERANCE = 0.005


@dataclass(frozen=True)
class LayerProbe:
    layer: int
    C: float
    validation_f1: float
    nonzero_weights: int
    neurons: tuple[int, ...]
    #: Of the probe with the chosen C, on all of the layer's neurons (NaN when validation has one class).
    validation_auroc: float = float("nan")

    def to_dict(self) -> dict:
        return {"layer": self.layer, "C": self.C, "validation_f1": round(self.validation_f1, 6),
                "validation_auroc": round(self.validation_auroc, 6),
                "nonzero_weights": self.nonzero_weights, "neurons": len(self.neurons)}


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, C: float, seed: int = 0) -> tuple[StandardScaler, LogisticRegression]:
    scaler = StandardScaler().fit(train_x)
    probe = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=C, class_weight="balanced", max_iter=500, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(scaler.transform(train_x), train_y)
    return scaler, probe


def fit_layer_probe(layer: int, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                    eta: float, c_grid: Sequence[float] = DEFAULT_C_GRID, patience: int = 2, seed: int = 0) -> LayerProbe:
    best: tuple[float, float, np.ndarray, float] | None = None
    since_best = 0
    for C in sorted(c_grid):
        scaler, probe = fit_probe(train_x, train_y, C, seed)
        f1 = float(f1_score(val_y, probe.predict(scaler.transform(val_x)), zero_division=0.0))
        if best is None or f1 > best[1] + 1e-9:
            auroc = _auroc(val_y, probe.decision_function(scaler.transform(val_x)))
            best, since_best = (C, f1, probe.coef_.ravel().copy(), auroc), 0
        elif best[1] > 0.0:  # all-zero probes at the strongest penalties do not count towards patience
            since_best += 1
            if since_best >= patience:
                break
    C, f1, weights, auroc = best
    return LayerProbe(layer, C, f1, int(np.count_nonzero(weights)), tuple(select_neurons(weights, eta)), auroc)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores)) if len(set(np.asarray(labels).tolist())) == 2 else float("nan")


def best_probe(probes: Sequence[LayerProbe]) -> LayerProbe:
    """The probe with the highest validation F1; AUROC breaks ties, then the lower layer."""
    return max(probes, key=lambda probe: (probe.validation_f1, np.nan_to_num(probe.validation_auroc), -probe.layer))


def shortfall(probe: LayerProbe, f1: float, auroc: float) -> float:
    """How far validation F1 or AUROC falls below ``probe``'s (0 when neither does)."""
    return float(max(0.0, probe.validation_f1 - f1, np.nan_to_num(probe.validation_auroc) - np.nan_to_num(auroc)))


@dataclass(frozen=True)
class ProbeComparison:
    """The final head against the stage-1 probes it is built from, all on validation at threshold 0.5."""

    best: LayerProbe
    last: LayerProbe
    head_f1: float
    head_auroc: float
    #: Shortfalls up to this are within the noise of a validation split of a few hundred texts.
    tolerance: float = PROBE_TOLERANCE

    @property
    def shortfall(self) -> float:
        return shortfall(self.best, self.head_f1, self.head_auroc)

    @property
    def head_below_best_probe(self) -> bool:
        return self.shortfall > self.tolerance

    @property
    def warning(self) -> str | None:
        if not self.head_below_best_probe:
            return None
        return (f"the head's validation F1 {self.head_f1:.4f} / AUROC {self.head_auroc:.4f} is below the layer "
                f"{self.best.layer} probe's {self.best.validation_f1:.4f} / {self.best.validation_auroc:.4f}: "
                "stage 2 lost what stage 1 found")

    def to_dict(self) -> dict:
        return {
            "best_probe": _probe_scores(self.best),
            "last_layer_probe": _probe_scores(self.last),
            "head": {"validation_f1": round(self.head_f1, 6), "validation_auroc": round(self.head_auroc, 6)},
            "shortfall": round(self.shortfall, 6),
            "tolerance": self.tolerance,
            "head_below_best_probe": self.head_below_best_probe,
            "warning": self.warning,
        }


def _probe_scores(probe: LayerProbe) -> dict:
    return {"layer": probe.layer, "validation_f1": round(probe.validation_f1, 6),
            "validation_auroc": round(probe.validation_auroc, 6)}


def fit_layer_probes(train: Mapping[int, np.ndarray], train_y: np.ndarray, validation: Mapping[int, np.ndarray], val_y: np.ndarray,
                     layers: Sequence[int], eta: float, c_grid: Sequence[float] = DEFAULT_C_GRID, seed: int = 0,
                     progress: bool = False, jobs: int = 1) -> tuple[list[LayerProbe], dict[int, float]]:
    """Probes for ``layers`` and the layer weights alpha_l derived from their validation F1.

    liblinear fits one probe on one core; ``jobs`` processes fit layers side by side (same probes).
    """
    shown = tqdm(layers, desc="layer probes", unit="layer", disable=not progress, leave=False)
    probes = list(Parallel(n_jobs=jobs)(
        delayed(fit_layer_probe)(layer, train[layer], train_y, validation[layer], val_y, eta, c_grid, seed=seed)
        for layer in shown
    ))
    alphas = layer_alphas({probe.layer: probe.validation_f1 for probe in probes})
    return probes, alphas
