"""The one decision path: member scores -> member calibration -> combiner -> calibration -> threshold ->
failure policy.

``Ensemble`` decides with it at run time, and ``evaluate`` and ``calibrate`` score cached features with
the same object, so a config is always measured on the scale it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .calibration import Calibration
from .combiners import Combiner
from .config import CombinerConfig, EnsembleConfig, resolve_path
from .members import MemberPlan, build_combiner

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

    @classmethod
    def from_config(cls, config: EnsembleConfig, plans: Sequence[MemberPlan],
                    combiner: CombinerConfig | None = None, thresholds: Sequence[float] | None = None) -> "DecisionPath":
        """The config's path; ``combiner`` swaps in another combiner (without the config's calibration and
        threshold, which were chosen for the config's own combiner), ``thresholds`` replaces the members' ones."""
        built = build_combiner(config, plans, combiner, thresholds)
        own = combiner is None
        implied = built.default_threshold()
        if own and config.threshold is not None:
            threshold = config.threshold
        else:
            threshold = implied if implied is not None else DEFAULT_THRESHOLD
        calibration = Calibration.load(resolve_path(config.calibration, config.base_dir)) if own and config.calibration else None
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
        return self._calibrated(self.combiner.combine(self.calibrated_members(member_scores)))

    def _calibrated(self, combined: np.ndarray) -> np.ndarray:
        return combined if self.calibration is None else self.calibration.apply(combined)

    def decide(self, member_scores: np.ndarray, failed: np.ndarray, threshold: float | None = None) -> Decisions:
        """Scores and verdicts; a failed member (NaN) counts as benign before combining, and under
        ``fail_closed`` the text it failed on is scored 1.0 (harmful) whatever the others say.

        A score that is not finite at any stage (a member's, its calibration's, the combiner's, the
        config calibration's) is a failure too, never a verdict: ``NaN >= threshold`` is False, which
        would read as "not harmful". A member's counts as benign (0.0) on the shared scale; a non-finite
        ensemble score becomes 1.0 under ``fail_closed`` and 0.0 otherwise, with the reason in ``errors``.
        """
        threshold = self.threshold if threshold is None else threshold
        member_scores = np.asarray(member_scores, dtype=np.float64)
        failed = np.array(failed, dtype=bool)
        errors: list[dict[str, str]] = [{} for _ in range(len(member_scores))]
        unscored = ~np.isfinite(member_scores)
        self._note(errors, unscored & ~np.isnan(member_scores), member_scores, "non-finite score")
        calibrated = self.calibrated_members(np.where(unscored, 0.0, member_scores))
        bad_calibration = ~np.isfinite(calibrated)
        self._note(errors, bad_calibration, calibrated, "its calibration gave a non-finite score")
        calibrated = np.where(bad_calibration, 0.0, calibrated)
        combined = np.asarray(self.combiner.combine(calibrated), dtype=np.float64)
        scores = np.asarray(self._calibrated(combined), dtype=np.float64)
        for row in np.flatnonzero(~np.isfinite(scores)):
            stage = "combiner" if not np.isfinite(combined[row]) else "calibration"
            errors[row][ENSEMBLE_ERROR_KEY] = f"the {stage} gave a non-finite score ({scores[row]})"
        failed |= np.array([bool(row_errors) for row_errors in errors], dtype=bool)
        scores = np.where(np.isfinite(scores), scores, 1.0 if self.on_member_error == "fail_closed" else 0.0)
        if self.on_member_error == "fail_closed":
            scores = np.where(failed, 1.0, scores)
        return Decisions(scores, scores >= threshold, failed, tuple(errors))

    def _note(self, errors: list[dict[str, str]], where: np.ndarray, values: np.ndarray, what: str) -> None:
        for row, column in zip(*np.nonzero(where)):
            errors[row][self.member_names[column]] = f"{what} ({values[row, column]})"
