"""Combiners turn the member scores of each text into one ensemble score.

Each combiner declares its options as a pydantic model, so a config error names the field
(``combiner.k``); ``combine`` maps a (texts x members) score matrix to one score per text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from .errors import ConfigError


#: Probabilities are clipped this far from 0 and 1 before taking logits.
LOGIT_EPSILON = 1e-6


def logit(probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), LOGIT_EPSILON, 1 - LOGIT_EPSILON)
    return np.log(clipped / (1 - clipped))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


@dataclass(frozen=True)
class MemberView:
    """What a combiner may know about a member."""

    name: str
    weight: float
    threshold: float


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Combiner:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: True for a combiner whose members run in stages (``stages()``), each able to decide a text.
    staged: ClassVar[bool] = False

    def __init__(self, options: BaseModel, members: Sequence[MemberView], config_dir: Path):
        self.options = options
        self.members = list(members)
        self.config_dir = config_dir

    def combine(self, scores: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def default_threshold(self) -> float | None:
        """A threshold implied by the combiner itself (vote); ``None`` uses the config's."""
        return None


class MeanCombiner(Combiner):
    name = "mean"
    description = "unweighted mean of member scores"

    def combine(self, scores: np.ndarray) -> np.ndarray:
        return scores.mean(axis=1)


class WeightedMeanCombiner(Combiner):
    name = "weighted_mean"
    description = "mean of member scores weighted by each member's `weight`"

    def __init__(self, options, members, config_dir):
        super().__init__(options, members, config_dir)
        weights = np.array([member.weight for member in self.members], dtype=np.float64)
        if weights.sum() <= 0:
            raise ConfigError(f"members[*].weight: {self.name} needs a positive total weight")
        self.weights = weights / weights.sum()

    def combine(self, scores: np.ndarray) -> np.ndarray:
        return scores @ self.weights


class LogitMeanCombiner(WeightedMeanCombiner):
    """Pooled log-odds: the weighted mean of the members' logits, back through the sigmoid.

    With members calibrated onto one scale this is the natural average of probabilities: two members
    at 0.9 and 0.1 give 0.5, while one confident member among unsure ones moves the score less than
    ``max`` lets it (the everyday requests that one member alone scores above 0.9).
    """

    name = "logit_mean"
    description = "sigmoid of the weighted mean of member logits (pooled log-odds of calibrated members)"

    def combine(self, scores: np.ndarray) -> np.ndarray:
        return sigmoid(super().combine(logit(scores)))


class MaxCombiner(Combiner):
    name = "max"
    description = "highest member score (any member can flag)"

    def combine(self, scores: np.ndarray) -> np.ndarray:
        return scores.max(axis=1)


class VoteOptions(NoOptions):
    rule: Literal["any", "majority", "k"] = "majority"
    k: int | None = None


class VoteCombiner(Combiner):
    """Each member votes with its own threshold; the score is the fraction of harmful votes.

    The decision threshold is implied by the rule (any: 1/n, majority: more than half, k: k/n).
    """

    name = "vote"
    description = "members vote with their own thresholds: any, majority, or k of n"
    Options = VoteOptions

    def __init__(self, options: VoteOptions, members, config_dir):
        super().__init__(options, members, config_dir)
        n = len(self.members)
        if options.rule == "k":
            if options.k is None:
                raise ConfigError("combiner.k: required when rule is 'k'")
            if not 1 <= options.k <= n:
                raise ConfigError(f"combiner.k: must be between 1 and the number of members ({n}), got {options.k}")
        elif options.k is not None:
            raise ConfigError(f"combiner.k: only used with rule 'k' (rule is {options.rule!r})")
        self.votes_needed = {"any": 1, "majority": n // 2 + 1, "k": options.k}[options.rule]
        self.thresholds = np.array([member.threshold for member in self.members], dtype=np.float64)

    def combine(self, scores: np.ndarray) -> np.ndarray:
        return (scores >= self.thresholds).sum(axis=1) / len(self.members)

    def default_threshold(self) -> float:
        return self.votes_needed / len(self.members)
