"""Fitting the cascade's bands on validation data (``siren-ensemble calibrate`` on a cascade config).

The rule, stage by stage from the cheapest, with the final threshold fixed:

1. The reference is every member run (the cascade's last-stage combination for every text), decided
   at the final threshold.
2. ``low`` is raised as far as it can go, deciding benign the texts that reach the stage with the
   lowest scores there, while the cascade stays within ``BandRule`` of the reference: recall at most
   ``max_recall_loss`` below it, FPR at most ``max_fpr_rise`` above it, and verdicts agreeing on at
   least ``min_agreement`` of the texts. Then ``high`` is lowered the same way, deciding harmful the
   highest scores. Each moves only down to the threshold, so an early verdict never contradicts the
   stage's own score.
3. A band sits halfway between the last text it decides and the next text reaching the stage (as
   ``threshold_for_recall`` places thresholds), and a stage that can decide nothing within the budget
   gets no band. The budget is spent by the cheapest stage first, where deciding saves the most.

The constraints are checked on the complete cascade (later stages without bands), so the bands
written satisfy them on validation; the test split says how far that holds on unseen texts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..decision import DecisionPath

Band = tuple[float | None, float | None]


@dataclass(frozen=True)
class BandRule:
    #: Recall the cascade may lose against every member, at the final threshold (0.005: half a point).
    max_recall_loss: float = 0.005
    #: FPR the cascade may add against every member, at the final threshold.
    max_fpr_rise: float = 0.005
    #: Share of texts whose verdict must equal the verdict of every member.
    min_agreement: float = 0.99


@dataclass(frozen=True)
class CascadeFit:
    bands: tuple[Band, ...]
    threshold: float
    #: Every member run, at the threshold.
    reference_recall: float | None
    reference_fpr: float | None
    recall: float | None
    fpr: float | None
    agreement: float
    #: Share of the texts each stage decided.
    decided_share: tuple[float, ...]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["bands"] = [{"low": low, "high": high} for low, high in self.bands]  # exact: they sit between scores
        data["decided_share"] = [round(share, 6) for share in self.decided_share]
        return {key: round(value, 6) if isinstance(value, float) else value for key, value in data.items()}


@dataclass
class _Budget:
    """Verdicts of the cascade under construction against the reference, and what the rule allows."""

    labels: np.ndarray
    reference: np.ndarray
    rule: BandRule

    def __post_init__(self):
        self.harmful = max(int((self.labels == 1).sum()), 1)
        self.benign = max(int((self.labels == 0).sum()), 1)
        self.min_recall = _recall(self.labels, self.reference) - self.rule.max_recall_loss
        self.max_fpr = _fpr(self.labels, self.reference) + self.rule.max_fpr_rise

    def widest(self, verdict: np.ndarray, rows: np.ndarray, flip_to: bool) -> int:
        """How many of ``rows`` (in order) can take verdict ``flip_to`` together within the rule."""
        changes = verdict[rows] != flip_to
        sign = 1 if flip_to else -1
        recall = _recall(self.labels, verdict) + sign * np.cumsum(changes & (self.labels[rows] == 1)) / self.harmful
        fpr = _fpr(self.labels, verdict) + sign * np.cumsum(changes & (self.labels[rows] == 0)) / self.benign
        # A changed verdict now disagrees with the reference unless the reference says ``flip_to``.
        disagreement = (verdict != self.reference).sum() + np.cumsum(
            np.where(changes, np.where(self.reference[rows] == flip_to, -1, 1), 0))
        within = ((recall >= self.min_recall - 1e-12) & (fpr <= self.max_fpr + 1e-12)
                  & (1 - disagreement / len(verdict) >= self.rule.min_agreement - 1e-12))
        # Flipping more rows only worsens agreement and one of recall / FPR, and only helps the other (which held
        # already), so the counts within the rule are a prefix.
        return int(np.argmin(within)) if not within.all() else len(rows)


def fit_bands(path: DecisionPath, member_scores: np.ndarray, labels: np.ndarray, threshold: float,
              rule: BandRule = BandRule()) -> CascadeFit:
    """Bands for every stage of ``path`` (a cascade) on complete validation scores; the last stage gets none."""
    labels = np.asarray(labels, dtype=int)
    stage_scores = path.stage_scores(member_scores)
    reference = path.without_bands().scores(member_scores) >= threshold
    budget = _Budget(labels, reference, rule)
    verdict = reference.copy()
    reaching = np.ones(len(labels), dtype=bool)
    bands: list[Band] = []
    for stage in range(stage_scores.shape[1] - 1):
        scores = stage_scores[:, stage]
        low = _fit_side(scores, reaching, verdict, budget, threshold, benign=True)
        if low is not None:
            decided = reaching & (scores < low)
            verdict[decided], reaching[decided] = False, False
        high = _fit_side(scores, reaching, verdict, budget, threshold, benign=False)
        if high is not None:
            decided = reaching & (scores >= high)
            verdict[decided], reaching[decided] = True, False
        bands.append((low, high))
    bands.append((None, None))
    return _measure(path.with_bands(bands), member_scores, labels, threshold, reference)


def _fit_side(scores: np.ndarray, reaching: np.ndarray, verdict: np.ndarray, budget: _Budget, threshold: float,
              benign: bool) -> float | None:
    """The widest ``low`` (benign) or ``high`` band within the budget for the texts reaching this stage."""
    finite = reaching & np.isfinite(scores)
    side = finite & ((scores < threshold) if benign else (scores >= threshold))
    rows = np.flatnonzero(side)
    rows = rows[np.argsort(scores[rows] if benign else -scores[rows], kind="stable")]
    if not rows.size:
        return None
    ordered = scores[rows]
    count = budget.widest(verdict, rows, flip_to=not benign)
    # A band cannot split equal scores: step back to where the score changes.
    while 0 < count < len(rows) and ordered[count] == ordered[count - 1]:
        count -= 1
    if count == 0:
        return None
    last = ordered[count - 1]
    others = scores[finite & ((scores > last) if benign else (scores < last))]
    if benign:  # low: above the last text decided, up to the next one (or the threshold)
        following = min(others.min(), threshold) if others.size else threshold
        band = (last + following) / 2
        return float(band if last < band <= following else following)
    # high: at most the last text decided, above the next one (and never under the threshold)
    following = max(others.max(), threshold) if others.size else threshold
    band = (last + following) / 2
    return float(max(band if following < band <= last else last, threshold))


def _measure(path: DecisionPath, member_scores: np.ndarray, labels: np.ndarray, threshold: float,
             reference: np.ndarray) -> CascadeFit:
    staged = path.staged_scores(member_scores)
    verdict = staged.scores >= threshold
    stages = len(path.stages)
    shares = tuple(float((staged.decided_by == stage).mean()) for stage in range(stages))
    return CascadeFit(
        bands=tuple(path.bands), threshold=float(threshold),
        reference_recall=_recall(labels, reference) if (labels == 1).any() else None,
        reference_fpr=_fpr(labels, reference) if (labels == 0).any() else None,
        recall=_recall(labels, verdict) if (labels == 1).any() else None,
        fpr=_fpr(labels, verdict) if (labels == 0).any() else None,
        agreement=float((verdict == reference).mean()), decided_share=shares,
    )


def _recall(labels: np.ndarray, verdict: np.ndarray) -> float:
    harmful = labels == 1
    return float(verdict[harmful].mean()) if harmful.any() else 1.0


def _fpr(labels: np.ndarray, verdict: np.ndarray) -> float:
    benign = labels == 0
    return float(verdict[benign].mean()) if benign.any() else 0.0
