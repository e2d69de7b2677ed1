"""The one decision path: member scores -> member calibration -> combiner (stage by stage, for the
cascade) -> calibration -> threshold -> failure policy.

``Ensemble`` decides with it at run time, and ``evaluate`` and ``calibrate`` score cached features with
the same object, so a config is always measured on the scale it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .calibration import Calibration
from .cascade import PENDING, Stage, Staged, check_bands_against_threshold, run_stages, single_stage
from .combiners import Combiner
from .config import CombinerConfig, EnsembleConfig
from .errors import ConfigError
from .members import MemberPlan, build_combiner
from .weights import resolve_path

#: The decision threshold when neither the config nor the combiner names one.
DEFAULT_THRESHOLD = 0.5
#: The key under a result's ``errors`` when the combined (or calibrated) score itself is not finite.
ENSEMBLE_ERROR_KEY = "ensemble"


@dataclass(frozen=True)
class Decisions:
    scores: np.ndarray  # one ensemble score per text
    is_harmful: np.ndarray
    #: Texts on which a member or the ensemble score failed (``fail_closed`` scored them 1.0).
    failed: np.ndarray
    #: Per text, the failures found on the path itself: a non-finite score, by member name or ``ENSEMBLE_ERROR_KEY``.
    errors: tuple[dict[str, str], ...] = ()
    #: Per text, the index of the stage that decided it (0 when the combiner has one stage); ``PENDING``
    #: for a text whose remaining stages were not run yet (``decide(..., through=)``).
    decided_by: np.ndarray | None = None

    @property
    def pending(self) -> np.ndarray:
        return self.decided_by == PENDING


@dataclass(frozen=True)
class DecisionPath:
    member_names: tuple[str, ...]
    #: Per member, the mapping of its head's score onto one shared scale (``calibration.json`` beside the head).
    member_calibrations: tuple[Calibration | None, ...]
    combiner: Combiner
    #: The config's ``calibration:``, applied to the combined score.
    calibration: Calibration | None
    threshold: float
    on_member_error: str = "fail_closed"
    #: Per stage (low, high), replacing the combiner's own bands (``calibrate`` trying bands); None: the combiner's.
    bands: tuple[tuple[float | None, float | None], ...] | None = None

    @property
    def staged(self) -> bool:
        """Whether results say which stage decided them (the cascade)."""
        return self.combiner.staged

    @property
    def stages(self) -> tuple[Stage, ...]:
        stages = self.combiner.stages() if self.combiner.staged else single_stage(self.combiner, len(self.member_names))
        if self.bands is None:
            return stages
        return tuple(stage.with_bands(low, high) for stage, (low, high) in zip(stages, self.bands))

    def with_bands(self, bands: Sequence[tuple[float | None, float | None]]) -> "DecisionPath":
        return replace(self, bands=tuple(bands))

    def without_bands(self) -> "DecisionPath":
        """The same path deciding every text at the last stage: every member run, as without a cascade."""
        return self.with_bands([(None, None)] * len(self.stages))

    @classmethod
    def from_config(cls, config: EnsembleConfig, plans: Sequence[MemberPlan],
                    combiner: CombinerConfig | None = None, thresholds: Sequence[float] | None = None,
                    where: str = "") -> "DecisionPath":
        """The config's path; ``combiner`` swaps in another combiner (without the config's calibration and
        threshold, which were chosen for the config's own combiner), ``thresholds`` replaces the members' ones.
        ``where`` names the part of the config it comes from in errors (``by_kind.response.``)."""
        built = build_combiner(config, plans, combiner, thresholds)
        own = combiner is None
        implied = built.default_threshold()
        if own and config.threshold is not None:
            threshold = config.threshold
        else:
            threshold = implied if implied is not None else DEFAULT_THRESHOLD
        calibration = Calibration.load(resolve_path(config.calibration, config.base_dir)) if own and config.calibration else None
        if own and built.staged:
            try:
                check_bands_against_threshold(built.stages(), threshold)
            except ConfigError as error:
                raise ConfigError(f"{config.source}: {where}{error}") from None
        return cls(tuple(plan.name for plan in plans), tuple(plan.calibration for plan in plans), built, calibration,
                   threshold, config.on_member_error)

    def calibrated_members(self, member_scores: np.ndarray) -> np.ndarray:
        """Each member's column on the shared scale (columns without a calibration pass through)."""
        columns = [
            column if calibration is None else calibration.apply(column)
            for column, calibration in zip(np.asarray(member_scores, dtype=np.float64).T, self.member_calibrations)
        ]
        return np.stack(columns, axis=1) if columns else np.zeros((len(member_scores), 0))

    def scores(self, member_scores: np.ndarray) -> np.ndarray:
        """Ensemble scores of complete rows of head scores (texts x members, no failures)."""
        return self.staged_scores(member_scores).scores

    def staged_scores(self, member_scores: np.ndarray) -> Staged:
        """Scores of complete rows and the stage that decides each (what ``evaluate`` and ``calibrate`` read)."""
        return run_stages(self.stages, self.calibrated_members(member_scores), self._calibrated)

    def stage_scores(self, member_scores: np.ndarray) -> np.ndarray:
        """Every stage's score of every text (texts x stages), as if no earlier stage had decided it."""
        calibrated = self.calibrated_members(member_scores)
        return np.stack([self._calibrated(stage.combiner.combine(calibrated[:, stage.reads])) for stage in self.stages], axis=1)

    def _calibrated(self, combined: np.ndarray) -> np.ndarray:
        return combined if self.calibration is None else self.calibration.apply(combined)

    def decide(self, member_scores: np.ndarray, failed: np.ndarray, threshold: float | None = None,
               through: int | None = None) -> Decisions:
        """Scores, verdicts and the deciding stage; a failed member (NaN) counts as benign before combining, and
        under ``fail_closed`` the text it failed on is scored 1.0 (harmful) whatever the others say.

        ``failed`` marks failed texts, or failed members (texts x members); a cascade needs the latter to
        know at which stage a text failed (there it stops under ``fail_closed``: later members cannot change
        its verdict). A member that did not run on a text (a later stage of a decided text) is NaN and not
        failed. ``through`` runs only the first stages (``Ensemble`` asks which texts go on after each).

        A score that is not finite at any stage (a member's, its calibration's, the combiner's, the config
        calibration's) is a failure too, never a verdict: ``NaN >= threshold`` is False, which would read as
        "not harmful". A member's counts as benign (0.0) on the shared scale; a non-finite ensemble score
        becomes 1.0 under ``fail_closed`` and 0.0 otherwise, with the reason in ``errors``.
        """
        threshold = self.threshold if threshold is None else threshold
        member_scores = np.asarray(member_scores, dtype=np.float64)
        failed_members = _member_mask(failed, member_scores.shape)
        errors: list[dict[str, str]] = [{} for _ in range(len(member_scores))]
        unscored = ~np.isfinite(member_scores)
        non_finite = unscored & ~np.isnan(member_scores)
        self._note(errors, non_finite, member_scores, "non-finite score")
        calibrated = self.calibrated_members(np.where(unscored, 0.0, member_scores))
        bad_calibration = ~np.isfinite(calibrated)
        self._note(errors, bad_calibration, calibrated, "its calibration gave a non-finite score")
        calibrated = np.where(bad_calibration, 0.0, calibrated)
        failed_members |= non_finite | bad_calibration
        staged = run_stages(self.stages, calibrated, self._calibrated, failed_members,
                            stop_on_failure=self.on_member_error != "fail_open", through=through)
        scores = staged.scores
        decided = ~staged.pending
        for row in np.flatnonzero(decided & ~np.isfinite(scores)):
            stage = "combiner" if not np.isfinite(staged.combined[row]) else "calibration"
            errors[row][ENSEMBLE_ERROR_KEY] = f"the {stage} gave a non-finite score ({scores[row]})"
        failed_rows = failed_members.any(axis=1) | np.array([bool(row_errors) for row_errors in errors], dtype=bool)
        scores = np.where(np.isfinite(scores) | ~decided, scores, 1.0 if self.on_member_error == "fail_closed" else 0.0)
        if self.on_member_error == "fail_closed":
            scores = np.where(failed_rows & decided, 1.0, scores)
        with np.errstate(invalid="ignore"):
            is_harmful = decided & (scores >= threshold)
        return Decisions(scores, is_harmful, failed_rows, tuple(errors), staged.decided_by)

    def _note(self, errors: list[dict[str, str]], where: np.ndarray, values: np.ndarray, what: str) -> None:
        for row, column in zip(*np.nonzero(where)):
            errors[row][self.member_names[column]] = f"{what} ({values[row, column]})"


def _member_mask(failed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Failed members (texts x members); a failed text, given as one flag, counts as failed at every member."""
    failed = np.array(failed, dtype=bool)
    return np.broadcast_to(failed[:, None], shape).copy() if failed.ndim == 1 else failed.copy()
