"""Stacking: logistic regression over member scores, with its parameters in a small file.

The file is JSON (``.json``) or safetensors (``.safetensors``, member names in its metadata).
Features are the logits of the (calibrated) member scores, clipped away from 0 and 1, which is
what a logistic model over probabilities wants, optionally with the pairwise products of those
logits (``interactions``: "trust A more when B agrees"); ``fit`` is scikit-learn's LogisticRegression.
``siren-ensemble fit-stacker`` fits it on cross-fitted member scores and may store the threshold
chosen on the stacker's own out-of-fold predictions, which the combiner then implies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from .combiners import Combiner, logit, sigmoid
from . import files
from .errors import ArtifactError, ConfigError
from .numbers import finite_number, finite_numbers

FORMAT = "siren-ensemble/stacker-v1"


def stacking_features(scores: np.ndarray, interactions: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """Member logits, then the product of the logits of each interacting pair of columns."""
    logits = logit(scores)
    products = [logits[:, a] * logits[:, b] for a, b in interactions]
    return np.column_stack([logits, *products]) if products else logits


@dataclass(frozen=True)
class StackerParams:
    members: tuple[str, ...]
    #: One per member logit, then one per interaction.
    coefficients: tuple[float, ...]
    intercept: float
    fitted_on: dict = field(default_factory=dict)
    #: Pairs of member names whose logit product is a feature.
    interactions: tuple[tuple[str, str], ...] = ()
    #: Chosen on the stacker's out-of-fold predictions (``fit-stacker --target-recall``); implied by the combiner.
    threshold: float | None = None

    def predict(self, scores: np.ndarray) -> np.ndarray:
        position = {name: index for index, name in enumerate(self.members)}
        pairs = [(position[a], position[b]) for a, b in self.interactions]
        return sigmoid(stacking_features(scores, pairs) @ np.asarray(self.coefficients) + self.intercept)

    def reordered(self, names: Sequence[str]) -> "StackerParams":
        """The same model reading member columns in ``names`` order."""
        by_name = dict(zip(self.members, self.coefficients))
        return StackerParams(tuple(names), tuple(by_name[name] for name in names) + self.coefficients[len(self.members):],
                             self.intercept, self.fitted_on, self.interactions, self.threshold)

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
                "interactions": json.dumps([list(pair) for pair in self.interactions]), "threshold": json.dumps(self.threshold),
            })
        else:
            payload = {
                "format": FORMAT, "members": list(self.members), "coefficients": list(self.coefficients),
                "intercept": self.intercept, "interactions": [list(pair) for pair in self.interactions],
                "threshold": self.threshold, "fitted_on": self.fitted_on,
            }
            path.write_text(json.dumps(payload, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "StackerParams":
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"{path}: stacking parameters file is missing (fit one with `siren-ensemble fit-stacker`)")
        files.check_file(path, files.MAX_ARTIFACT_BYTES, ArtifactError, "stacking parameters file")
        try:
            if path.suffix == ".safetensors":
                raw = _read_safetensors(path)
            else:
                raw = json.loads(files.read_text(path, files.MAX_ARTIFACT_BYTES, ArtifactError, "stacking parameters file"))
            members = tuple(str(name) for name in raw["members"])
            coefficients = finite_numbers(raw["coefficients"], path, "coefficients")
            intercept = finite_number(raw["intercept"], path, "intercept")
            interactions = tuple((str(a), str(b)) for a, b in raw.get("interactions") or ())
            threshold = None if raw.get("threshold") is None else finite_number(raw["threshold"], path, "threshold")
        except (KeyError, TypeError, ValueError, OSError) as error:
            raise ArtifactError(f"{path}: not a stacking parameters file ({type(error).__name__}: {error})") from None
        if len(members) + len(interactions) != len(coefficients):
            raise ArtifactError(f"{path}: coefficients: {len(coefficients)} values for {len(members)} members "
                                f"and {len(interactions)} interactions")
        unknown = sorted({name for pair in interactions for name in pair} - set(members))
        if unknown:
            raise ArtifactError(f"{path}: interactions: {unknown[0]!r} is not one of the members {list(members)}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ArtifactError(f"{path}: threshold: expected a number between 0 and 1, got {threshold}")
        return cls(members, coefficients, intercept, raw.get("fitted_on", {}), interactions, threshold)


def _read_safetensors(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata() or {}
        return {
            "members": json.loads(metadata["members"]),
            "coefficients": handle.get_tensor("coefficients").tolist(),
            "intercept": handle.get_tensor("intercept").reshape(-1)[0],
            "fitted_on": json.loads(metadata.get("fitted_on", "{}")),
            "interactions": json.loads(metadata.get("interactions", "[]")),
            "threshold": json.loads(metadata.get("threshold", "null")),
        }


def fit_stacker(scores: np.ndarray, labels: Sequence[int], members: Sequence[str], seed: int = 0,
                interactions: bool = False) -> StackerParams:
    """Logistic regression on member logits (and, with ``interactions``, every pair's logit product)."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, dtype=int)
    if set(np.unique(labels)) != {0, 1}:
        raise ConfigError("fit-stacker needs labelled examples of both classes (label 0 and label 1)")
    pairs = [(a, b) for a in range(len(members)) for b in range(a + 1, len(members))] if interactions else []
    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(stacking_features(scores, pairs), labels)
    return StackerParams(
        members=tuple(members),
        coefficients=tuple(float(value) for value in model.coef_[0]),
        intercept=float(model.intercept_[0]),
        fitted_on={"examples": int(len(labels)), "harmful": int(labels.sum())},
        interactions=tuple((members[a], members[b]) for a, b in pairs),
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
        self.params = params.reordered(names)

    def combine(self, scores: np.ndarray) -> np.ndarray:
        return self.params.predict(scores)

    def default_threshold(self) -> float | None:
        return self.params.threshold
