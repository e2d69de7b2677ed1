"""Binary metrics of a harmfulness score against labels (1 harmful, 0 benign).

Threshold metrics count ``score >= threshold`` as harmful, as the runtime decides. A metric that
needs a class the data lacks (recall without harmful records, FPR without benign ones, AUROC
without both) is ``None`` rather than a misleading 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


@dataclass(frozen=True)
class BinaryMetrics:
    count: int
    harmful: int
    benign: int
    threshold: float
    f1: float | None
    macro_f1: float | None
    precision: float | None
    recall: float | None
    fpr: float | None
    auroc: float | None
    auprc: float | None
    tpr_at_1pct_fpr: float | None
    tpr_at_5pct_fpr: float | None

    def to_dict(self) -> dict:
        return rounded_fields(self)


def rounded_fields(metrics) -> dict:
    """A metrics dataclass as a dict, floats rounded to 6 places (the reports' JSON)."""
    return {key: (round(value, 6) if isinstance(value, float) else value) for key, value in asdict(metrics).items()}


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def _f1(tp: float, fp: float, fn: float) -> float | None:
    return float(2 * tp / (2 * tp + fp + fn)) if (2 * tp + fp + fn) else None


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float | None:
    """The best recall reachable by a threshold whose false-positive rate stays at or below ``max_fpr``."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def binary_metrics(labels, scores, threshold: float) -> BinaryMetrics:
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=np.float64)
    predicted = scores >= threshold
    tp = float(np.sum(predicted & (labels == 1)))
    fp = float(np.sum(predicted & (labels == 0)))
    fn = float(np.sum(~predicted & (labels == 1)))
    tn = float(np.sum(~predicted & (labels == 0)))
    harmful, benign = int(tp + fn), int(fp + tn)
    f1_harmful, f1_benign = _f1(tp, fp, fn), _f1(tn, fn, fp)
    both = harmful > 0 and benign > 0
    return BinaryMetrics(
        count=len(labels), harmful=harmful, benign=benign, threshold=float(threshold),
        f1=f1_harmful if harmful else None,
        macro_f1=(f1_harmful + f1_benign) / 2 if both else None,
        precision=_ratio(tp, tp + fp), recall=_ratio(tp, harmful), fpr=_ratio(fp, benign),
        auroc=float(roc_auc_score(labels, scores)) if both else None,
        auprc=float(average_precision_score(labels, scores)) if both else None,
        tpr_at_1pct_fpr=tpr_at_fpr(labels, scores, 0.01) if both else None,
        tpr_at_5pct_fpr=tpr_at_fpr(labels, scores, 0.05) if both else None,
    )


def threshold_for_recall(labels, scores, target: float) -> float:
    """A threshold whose recall on ``labels``/``scores`` reaches ``target``.

    Start from the highest such threshold, then move down halfway to the next benign score below
    it: validation recall and FPR stay exactly the same, and unseen harmful texts scoring just
    under the tightest cut are caught.
    """
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=np.float64)
    harmful_scores = np.sort(scores[labels == 1])[::-1]
    if len(harmful_scores) == 0:
        raise ValueError("no harmful records to set a recall threshold on")
    needed = int(np.ceil(target * len(harmful_scores) - 1e-9))
    tightest = float(harmful_scores[max(needed, 1) - 1])
    benign_below = scores[(labels == 0) & (scores < tightest)]
    return tightest if len(benign_below) == 0 else float((tightest + benign_below.max()) / 2)


#: The shared scale of scores decided at different thresholds (a ``by_kind`` config's routes): each threshold maps here.
ROUTED_THRESHOLD = 0.5


def onto_shared_scale(scores: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """[0, threshold] onto [0, ROUTED_THRESHOLD] and [threshold, 1] onto [ROUTED_THRESHOLD, 1], linearly: verdicts at
    ``threshold`` become verdicts at ``ROUTED_THRESHOLD``, and the order of scores sharing a threshold is kept."""
    scores, threshold = np.asarray(scores, dtype=np.float64), np.asarray(threshold, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        below = np.where(threshold > 0, scores * ROUTED_THRESHOLD / threshold, 0.0)
        above = np.where(threshold < 1, ROUTED_THRESHOLD + (scores - threshold) * (1 - ROUTED_THRESHOLD) / (1 - threshold), 1.0)
    return np.where(scores >= threshold, above, below)

