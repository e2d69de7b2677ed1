"""Category scores across members, and what a result says about them.

Members with a category head give a probability per category; those are combined per category like
the binary score where the configured combiner is a pooling of scores (mean, weighted_mean,
logit_mean, max; a cascade pools with its ``combine``), and by their mean otherwise (vote and
stacking were fitted on binary scores and have no meaning per category). Only members that scored
the text and have the category take part; a category no such member has is not scored. Member
calibration is binary too, so category probabilities are combined as they come.

A result's categories are judged only when its text was scored without failure: under
``fail_closed`` a failed text is flagged, but gets no category scores (``None``), never invented ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .combiners import logit, sigmoid
from .config import EnsembleConfig
from .members import MemberPlan
from .taxonomy import CATEGORY_KEYS, openai_flags, openai_scores

DEFAULT_CATEGORY_THRESHOLD = 0.5
POOLING_RULES = ("mean", "weighted_mean", "logit_mean", "max")


@dataclass(frozen=True)
class CategoryVerdict:
    #: Taxonomy key -> ensemble probability; None when the text was not judged (it failed, or no member
    #: with a category head scored it).
    scores: dict[str, float] | None
    #: Taxonomy key -> threshold (``category_thresholds:`` in the config, else 0.5).
    thresholds: dict[str, float]

    def openai_scores(self) -> dict[str, float] | None:
        return None if self.scores is None else openai_scores(self.scores)

    def openai_flags(self, is_harmful: bool) -> dict[str, bool] | None:
        """Per judged OpenAI key: the text is flagged and a category mapping to the key reaches its threshold."""
        if self.scores is None:
            return None
        return {key: is_harmful and flag for key, flag in openai_flags(self.scores, self.thresholds).items()}

    def top_category(self, is_harmful: bool) -> str | None:
        """The highest-scoring OpenAI key of a flagged text; None for a text that is not flagged or not judged."""
        scores = self.openai_scores()
        if not is_harmful or not scores:
            return None
        return max(scores, key=lambda key: scores[key])

    def to_dict(self, is_harmful: bool) -> dict:
        rounded = None if self.scores is None else {key: float(value) for key, value in self.scores.items()}
        return {"categories": self.openai_scores(), "top_category": self.top_category(is_harmful),
                "harm_categories": rounded}


def pooling_rule(config: EnsembleConfig) -> str:
    """How member category scores are pooled under ``config``'s combiner (see the module docstring)."""
    if config.combiner.type in POOLING_RULES:
        return config.combiner.type
    combine = getattr(config.combiner_options(), "combine", None)
    return combine if combine in POOLING_RULES else "mean"


@dataclass(frozen=True)
class CategoryCombination:
    #: Every category some member's head scores, in taxonomy order.
    keys: tuple[str, ...]
    #: Per member, the position in ``keys`` of each output of its category head (None: it has none).
    member_columns: tuple[tuple[int, ...] | None, ...]
    rule: str
    weights: np.ndarray
    thresholds: dict[str, float]

    @classmethod
    def for_members(cls, config: EnsembleConfig, plans: Sequence[MemberPlan]) -> "CategoryCombination | None":
        """None when no member has a category head (results then carry no categories at all)."""
        return cls.build(config, [plan.categories.categories if plan.categories else None for plan in plans],
                         [plan.weight for plan in plans])

    @classmethod
    def build(cls, config: EnsembleConfig, member_categories: Sequence[Sequence[str] | None],
              weights: Sequence[float]) -> "CategoryCombination | None":
        present = {key for categories in member_categories if categories for key in categories}
        if not present:
            return None
        keys = tuple(key for key in CATEGORY_KEYS if key in present)
        columns = tuple(None if not categories else tuple(keys.index(key) for key in categories) for categories in member_categories)
        thresholds = {key: config.category_thresholds.get(key, DEFAULT_CATEGORY_THRESHOLD) for key in keys}
        return cls(keys, columns, pooling_rule(config), np.asarray(weights, dtype=np.float64), thresholds)

    def empty(self, texts: int) -> np.ndarray:
        """texts x members x categories, all unscored (NaN)."""
        return np.full((texts, len(self.member_columns), len(self.keys)), np.nan)

    def record(self, store: np.ndarray, rows: Sequence[int], member: int, probabilities: np.ndarray) -> None:
        """Write a member's probabilities (rows x its categories); a text scored by several windows keeps each
        category's highest window, as its binary score does."""
        columns = list(self.member_columns[member])
        for row, values in zip(rows, np.asarray(probabilities, dtype=np.float64)):
            store[row, member, columns] = np.fmax(store[row, member, columns], values)

    def combine(self, store: np.ndarray) -> np.ndarray:
        """texts x categories; NaN where no member scored the category."""
        scored = np.isfinite(store)
        weights = np.where(scored, self.weights[None, :, None], 0.0)
        if self.rule == "mean":
            weights = scored.astype(np.float64)
        if self.rule == "max":
            values = np.where(scored, store, -np.inf).max(axis=1)
            return np.where(scored.any(axis=1), values, np.nan)
        values = logit(np.where(scored, store, 0.5)) if self.rule == "logit_mean" else np.where(scored, store, 0.0)
        total = weights.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            pooled = (values * weights).sum(axis=1) / total
        pooled = sigmoid(pooled) if self.rule == "logit_mean" else pooled
        return np.where(total > 0, pooled, np.nan)

    def verdicts(self, store: np.ndarray, failed: np.ndarray) -> list[CategoryVerdict]:
        """One verdict per text; a failed text, or one no member judged, has no scores; a category no member
        scored (a cascade stage whose members lack it decided the text) is left out."""
        combined = self.combine(store)
        verdicts = []
        for row, values in enumerate(combined):
            scores = {key: float(value) for key, value in zip(self.keys, values) if np.isfinite(value)}
            verdicts.append(CategoryVerdict(scores if scores and not failed[row] else None, self.thresholds))
        return verdicts
