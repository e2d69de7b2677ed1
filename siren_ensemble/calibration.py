"""Score calibration (Platt or isotonic), stored as JSON and applied to the ensemble score.

A calibrated score reads as a probability of harm on data like the calibration set, so 0.5 means
"as likely harmful as not". The mapping is monotone, so recall-based thresholds keep their order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from .combiners import logit
from . import files
from .errors import ArtifactError
from .numbers import finite_number, finite_numbers

Method = Literal["platt", "isotonic"]
#: A member's calibration, beside its head's siren_config.json (llm-siren ignores it).
MEMBER_CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    method: Method
    parameters: dict

    def apply(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if self.method == "platt":
            z = self.parameters["slope"] * logit(scores) + self.parameters["intercept"]
            return 1.0 / (1.0 + np.exp(-z))
        return np.interp(scores, self.parameters["x"], self.parameters["y"])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"method": self.method, **self.parameters}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        path = Path(path)
        text = files.read_text(path, files.MAX_ARTIFACT_BYTES, ArtifactError, "calibration file")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise ArtifactError(f"{path}: not valid JSON ({error})") from None
        method = raw.pop("method", None) if isinstance(raw, dict) else None
        needed = {"platt": ("slope", "intercept"), "isotonic": ("x", "y")}.get(method)
        if needed is None:
            raise ArtifactError(f"{path}: method: expected 'platt' or 'isotonic', got {method!r}")
        missing = [key for key in needed if key not in raw]
        if missing:
            raise ArtifactError(f"{path}: {missing[0]}: missing for method {method!r}")
        if method == "platt":
            return cls(method, {**raw, "slope": finite_number(raw["slope"], path, "slope"),
                                "intercept": finite_number(raw["intercept"], path, "intercept")})
        x, y = finite_numbers(raw["x"], path, "x"), finite_numbers(raw["y"], path, "y")
        if len(x) != len(y) or len(x) < 2:
            raise ArtifactError(f"{path}: x, y: need two or more points of equal count")
        if any(later < earlier for earlier, later in zip(x, x[1:])):
            raise ArtifactError(f"{path}: x: must not decrease (np.interp reads the points in order)")
        outside = [index for index, value in enumerate(y) if not 0.0 <= value <= 1.0]
        if outside:
            raise ArtifactError(f"{path}: y[{outside[0]}]: expected a number between 0 and 1, got {y[outside[0]]}")
        return cls(method, {**raw, "x": list(x), "y": list(y)})


def fit_calibration(scores: np.ndarray, labels: np.ndarray, method: Method) -> Calibration:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=int)
    if method == "platt":
        model = LogisticRegression(C=1e6, max_iter=1000).fit(logit(scores).reshape(-1, 1), labels)
        return Calibration("platt", {"slope": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])})
    isotonic = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
    return Calibration("isotonic", {"x": isotonic.X_thresholds_.tolist(), "y": isotonic.y_thresholds_.tolist()})
