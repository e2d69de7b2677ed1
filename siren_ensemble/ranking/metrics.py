"""How well scores rank each group (lower score ranks first): pairwise accuracy, top-1 rate, NDCG.

Ties count as half right (pairwise) or as the share of preferred candidates among the tied first
(top-1), so a ranker that scores everything alike gets a random ranker's expected numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class GroupOutcome:
    #: Preferred-over-not pairs ordered right (ties count half), and how many such pairs there are.
    pairs_right: float
    pairs: int
    top1_preferred: float
    ndcg: float


def group_outcome(scores: Sequence[float], preferred: Sequence[bool]) -> GroupOutcome:
    scores = np.asarray(scores, dtype=np.float64)
    preferred = np.asarray(preferred, dtype=bool)
    good, bad = scores[preferred], scores[~preferred]
    right = float((good[:, None] < bad[None, :]).sum() + 0.5 * (good[:, None] == bad[None, :]).sum())
    first = scores == scores.min()
    return GroupOutcome(right, int(len(good) * len(bad)), float(preferred[first].mean()), _ndcg(scores, preferred))


def _ndcg(scores: np.ndarray, preferred: np.ndarray) -> float:
    if not preferred.any():
        return float("nan")
    discounts = 1.0 / np.log2(np.arange(2, len(scores) + 2))
    gains = preferred[np.argsort(scores, kind="stable")].astype(np.float64)
    ideal = np.sort(preferred.astype(np.float64))[::-1]
    return float((gains * discounts).sum() / (ideal * discounts).sum())


@dataclass(frozen=True)
class RankingMetrics:
    groups: int
    #: Over every preferred-vs-not pair of every group (pooled, so long lists weigh more).
    pairwise_accuracy: float
    #: Share of groups whose first candidate is a preferred one.
    top1_rate: float
    #: Mean NDCG per group (binary relevance: preferred or not).
    ndcg: float

    def to_dict(self) -> dict:
        return {"groups": self.groups, "pairwise_accuracy": _round(self.pairwise_accuracy),
                "top1_rate": _round(self.top1_rate), "ndcg": _round(self.ndcg)}


def summarise(outcomes: Sequence[GroupOutcome]) -> RankingMetrics:
    if not outcomes:
        return RankingMetrics(0, float("nan"), float("nan"), float("nan"))
    pairs = sum(outcome.pairs for outcome in outcomes)
    return RankingMetrics(
        groups=len(outcomes),
        pairwise_accuracy=sum(outcome.pairs_right for outcome in outcomes) / pairs if pairs else float("nan"),
        top1_rate=float(np.mean([outcome.top1_preferred for outcome in outcomes])),
        ndcg=float(np.nanmean([outcome.ndcg for outcome in outcomes])),
    )


def _round(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 4)
