"""Stacking: logistic regression over member scores, with its parameters in a small file.

The file is JSON (``.json``) or safetensors (``.safetensors``, member names in its metadata).
Features are the logits of the member scores (clipped away from 0 and 1), which is what a
logistic model over probabilities wants; ``fit`` is scikit-learn's LogisticRegression.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from .combiners import Combiner
from .errors import ArtifactError, ConfigError

FORMAT = "siren-ensemble/stacker-v1"
_EPSILON = 1e-6


def member_logits(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(scores, _EPSILON, 1 - _EPSILON)
    return np.log(clipped / (1 - clipped))


@dataclass(frozen=True)
class StackerParams:
    members: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float
    fitted_on: dict = field(default_factory=dict)

    def predict(self, scores: np.ndarray) -> np.ndarray:
        z = member_logits(scores) @ np.asarray(self.coefficients) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            import torch
            from safetensors.torch import save_file

            tensors = {
                "coefficients": torch.tensor(self.coefficients, dtype=torch.float64),
                "intercept": torch.tensor([self.intercept], dtype=torch.float64),
            }
            save_file(tensors, str(path), metadata={
                "format": FORMAT, "members": json.dumps(list(self.members)), "fitted_on": json.dumps(self.fitted_on),
            })
        else:
            payload = {
                "format": FORMAT, "members": list(self.members), "coefficients": list(self.coefficients),
                "intercept": self.intercept, "fitted_on": self.fitted_on,
            }
            path.write_text(json.dumps(payload, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "StackerParams":
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: stacking parameters file is missing (fit one with `siren-ensemble fit-stacker`)")
        try:
            if path.suffix == ".safetensors":
                raw = _read_safetensors(path)
            else:
                raw = json.loads(path.read_text(encoding="utf-8"))
            members = tuple(str(name) for name in raw["members"])
            coefficients = tuple(float(value) for value in raw["coefficients"])
            intercept = float(raw["intercept"])
        except (KeyError, TypeError, ValueError, OSError) as error:
            raise ArtifactError(f"{path}: not a stacking parameters file ({type(error).__name__}: {error})") from None
        if len(members) != len(coefficients):
            raise ArtifactError(f"{path}: coefficients: {len(coefficients)} values for {len(members)} members")
        return cls(members, coefficients, intercept, raw.get("fitted_on", {}))


def _read_safetensors(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata() or {}
        return {
            "members": json.loads(metadata["members"]),
            "coefficients": handle.get_tensor("coefficients").tolist(),
            "intercept": handle.get_tensor("intercept").reshape(-1)[0],
            "fitted_on": json.loads(metadata.get("fitted_on", "{}")),
        }


def fit_stacker(scores: np.ndarray, labels: Sequence[int], members: Sequence[str], seed: int = 0) -> StackerParams:
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=int)
    if set(np.unique(labels)) != {0, 1}:
        raise ConfigError("fit-stacker needs labelled examples of both classes (label 0 and label 1)")
    model = LogisticRegression(C=1.0, random_state=seed).fit(member_logits(scores), labels)
    return StackerParams(
        members=tuple(members),
        coefficients=tuple(float(value) for value in model.coef_[0]),
        intercept=float(model.intercept_[0]),
        fitted_on={"examples": int(len(labels)), "harmful": int(labels.sum())},
    )


class StackingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    params: str


class StackingCombiner(Combiner):
    name = "stacking"
    description = "logistic regression over member scores (parameters from `fit-stacker`)"
    Options = StackingOptions

    def __init__(self, options: StackingOptions, members, config_dir):
        super().__init__(options, members, config_dir)
        path = Path(options.params).expanduser()
        params = StackerParams.load(path if path.is_absolute() else config_dir / path)
        names = [member.name for member in self.members]
        if sorted(params.members) != sorted(names):
            raise ConfigError(
                f"combiner.params: {path} was fitted for members {list(params.members)}, "
                f"but the config has {names}; fit it again with `siren-ensemble fit-stacker`"
            )
        by_name = dict(zip(params.members, params.coefficients))
        self.params = StackerParams(tuple(names), tuple(by_name[name] for name in names), params.intercept, params.fitted_on)

    def combine(self, scores: np.ndarray) -> np.ndarray:
        return self.params.predict(scores)
