"""The cascade: members run in stages, cheapest first, and a text whose score is clearly low or clearly
high after a stage is decided there; the others go on to the next stage.

A stage's score combines every member run so far (this stage's and the earlier ones') with the
configured ``combine`` combiner, so the last stage's score is that combiner over all members. A text
is decided at a stage when its score is below the stage's ``low`` or at least its ``high``; the
last stage decides every text that reaches it. Bands are fitted on validation data by
``siren-ensemble calibrate`` (``evaluation/cascade_bands.py``).

``run_stages`` is the staging itself; ``DecisionPath`` calls it with the member calibrations, the
config's calibration and the failure policy around it, and ``Ensemble`` runs a stage's members only
on the texts it leaves undecided.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
from pydantic import Field

from .combiners import Combiner, LogitMeanCombiner, MaxCombiner, MeanCombiner, MemberView, NoOptions, WeightedMeanCombiner
from .errors import ConfigError

#: Combiners a stage may use: each reads any subset of members (weights renormalised over the subset).
STAGE_COMBINERS: dict[str, type[Combiner]] = {
    combiner.name: combiner for combiner in (MeanCombiner, WeightedMeanCombiner, LogitMeanCombiner, MaxCombiner)
}
#: ``decided_by`` of a text no stage has decided yet (its later stages have not run).
PENDING = -1


@dataclass(frozen=True)
class Stage:
    #: Positions (config order) of the members this stage runs.
    runs: tuple[int, ...]
    #: Positions of every member run up to and including this stage: what its score combines.
    reads: tuple[int, ...]
    combiner: Combiner
    #: A score below ``low`` is decided benign here, one at or above ``high`` harmful; None: no band.
    low: float | None = None
    high: float | None = None

    def settles(self, scores: np.ndarray) -> np.ndarray:
        settled = np.zeros(len(scores), dtype=bool)
        if self.low is not None:
            settled |= scores < self.low
        if self.high is not None:
            settled |= scores >= self.high
        return settled

    def with_bands(self, low: float | None, high: float | None) -> "Stage":
        return Stage(self.runs, self.reads, self.combiner, low, high)


@dataclass(frozen=True)
class Staged:
    """Per text: the deciding stage's score before and after ``rescale``, and which stage decided."""

    combined: np.ndarray
    scores: np.ndarray
    decided_by: np.ndarray

    @property
    def pending(self) -> np.ndarray:
        return self.decided_by == PENDING


def single_stage(combiner: Combiner, members: int) -> tuple[Stage, ...]:
    """Every combiner but the cascade: all members in one stage, which decides every text."""
    everyone = tuple(range(members))
    return (Stage(everyone, everyone, combiner),)


def run_stages(stages: Sequence[Stage], calibrated: np.ndarray, rescale: Callable[[np.ndarray], np.ndarray] | None = None,
               failed: np.ndarray | None = None, stop_on_failure: bool = False, through: int | None = None) -> Staged:
    """Decide texts stage by stage from their calibrated member scores (texts x members).

    ``rescale`` maps a stage's combined score onto the scale its bands (and the threshold) are on.
    ``failed`` marks failed members (texts x members): a stage's bands never decide a text on which one
    of its own members failed; with ``stop_on_failure`` (fail closed) that text stops at that stage,
    as its verdict no longer depends on later members, else it goes on. A non-finite stage score never
    decides either. Only the first ``through`` stages are run; texts they leave are ``PENDING``.
    """
    calibrated = np.asarray(calibrated, dtype=np.float64)
    count = len(calibrated)
    rescale = rescale or (lambda combined: combined)
    failed = np.zeros(calibrated.shape, dtype=bool) if failed is None else failed
    through = len(stages) if through is None else through
    combined, scores = np.full(count, np.nan), np.full(count, np.nan)
    decided_by = np.full(count, PENDING)
    for index, stage in enumerate(stages[:through]):
        rows = np.flatnonzero(decided_by == PENDING)
        if not rows.size:
            break
        stage_combined = np.asarray(stage.combiner.combine(calibrated[np.ix_(rows, stage.reads)]), dtype=np.float64)
        stage_scores = np.asarray(rescale(stage_combined), dtype=np.float64)
        failed_here = failed[np.ix_(rows, stage.runs)].any(axis=1)
        with np.errstate(invalid="ignore"):
            settles = ~failed_here & np.isfinite(stage_scores) & stage.settles(stage_scores)
        if index == len(stages) - 1:
            settles[:] = True
        elif stop_on_failure:
            settles |= failed_here
        decided = rows[settles]
        combined[decided], scores[decided] = stage_combined[settles], stage_scores[settles]
        decided_by[decided] = index
    return Staged(combined, scores, decided_by)


class CascadeStageOptions(NoOptions):
    #: Member names, as in ``members[*].name``.
    members: list[str] = Field(min_length=1)
    low: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    high: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)


class CascadeOptions(NoOptions):
    stages: list[CascadeStageOptions] = Field(min_length=1)
    #: How each stage combines the members run so far; the last stage's combination is the final one.
    combine: Literal["mean", "weighted_mean", "logit_mean", "max"] = "logit_mean"


class CascadeCombiner(Combiner):
    """Stages of members, cheapest first; ``combine`` on complete rows gives the score the stages decide."""

    name = "cascade"
    description = "members run in stages; a text clearly low or high after a stage is decided there"
    Options = CascadeOptions
    staged = True

    def __init__(self, options: CascadeOptions, members: Sequence[MemberView], config_dir: Path):
        super().__init__(options, members, config_dir)
        positions = _stage_positions(options.stages, [member.name for member in self.members])
        stages, reads = [], ()
        for index, (stage_options, runs) in enumerate(zip(options.stages, positions)):
            _check_bands(stage_options, index, last=index == len(options.stages) - 1)
            reads = tuple(sorted(reads + runs))
            inner = STAGE_COMBINERS[options.combine](NoOptions(), [self.members[position] for position in reads], config_dir)
            stages.append(Stage(runs, reads, inner, stage_options.low, stage_options.high))
        self._stages = tuple(stages)

    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    def combine(self, scores: np.ndarray) -> np.ndarray:
        return run_stages(self._stages, scores).scores


def _stage_positions(stages: Sequence[CascadeStageOptions], names: list[str]) -> list[tuple[int, ...]]:
    """Each stage's member positions; every member in exactly one stage, or a ConfigError naming the field."""
    placed: dict[str, int] = {}
    positions = []
    for index, stage in enumerate(stages):
        runs = []
        for slot, name in enumerate(stage.members):
            where = f"combiner.stages[{index}].members[{slot}]"
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{where}: unknown member {name!r}.{hint} Members: {', '.join(names)}")
            if name in placed:
                raise ConfigError(f"{where}: {name!r} is already in combiner.stages[{placed[name]}]; a member runs in one stage")
            placed[name] = index
            runs.append(names.index(name))
        positions.append(tuple(runs))
    missing = [name for name in names if name not in placed]
    if missing:
        raise ConfigError(
            f"combiner.stages: member {missing[0]!r} (members[{names.index(missing[0])}]) is in no stage; "
            f"every member runs in exactly one stage"
        )
    return positions


def _check_bands(stage: CascadeStageOptions, index: int, last: bool) -> None:
    where = f"combiner.stages[{index}]"
    if last and (stage.low is not None or stage.high is not None):
        field = "low" if stage.low is not None else "high"
        raise ConfigError(f"{where}.{field}: the last stage decides every text that reaches it; remove its low/high")
    if stage.low is not None and stage.high is not None and stage.low > stage.high:
        raise ConfigError(f"{where}.low: {stage.low} is above {where}.high ({stage.high})")


def check_bands_against_threshold(stages: Sequence[Stage], threshold: float) -> None:
    """Bands on the wrong side of the threshold would decide texts against what their score says."""
    for index, stage in enumerate(stages):
        if stage.low is not None and stage.low > threshold:
            raise ConfigError(
                f"combiner.stages[{index}].low: {stage.low} is above the decision threshold {threshold}; texts scored "
                f"between them would be flagged at this stage without the later members (keep low <= threshold <= high, "
                f"or refit the bands with `siren-ensemble calibrate`)"
            )
        if stage.high is not None and stage.high < threshold:
            raise ConfigError(
                f"combiner.stages[{index}].high: {stage.high} is below the decision threshold {threshold}; texts scored "
                f"between them would be passed at this stage without the later members (keep low <= threshold <= high, "
                f"or refit the bands with `siren-ensemble calibrate`)"
            )
