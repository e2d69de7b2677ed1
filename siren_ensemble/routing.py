"""Per-kind routing: a prompt alone and a prompt with its response, each decided by its own route.

A route is a ``DecisionPath``: the config's top level, or a ``by_kind`` entry (its own cascade stage order, bands,
threshold, calibration). Prompts and responses differ in what separates them (docs/evaluation.md: the members rank
responses in another order than prompts, and an operating point chosen on one kind is wrong for the other), so each
kind can be given its own. Every member is loaded once; a route only decides which run, in what order, and where
the line is.

The kind of an input: ``score(prompt=..., response=...)`` and JSONL ``prompt``/``response`` with a non-empty
response, a conversation whose judged turns hold an answer, a stream, and ``rank``'s candidates are responses;
a plain text is a prompt (``siren_ensemble.input_kinds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .config import INPUT_KINDS, EnsembleConfig
from .decision import DecisionPath
from .members import MemberPlan


@dataclass(frozen=True)
class Routes:
    """The decision path of each kind of input; a kind without a route of its own takes ``default``."""

    default: DecisionPath
    by_kind: dict[str, DecisionPath]

    @classmethod
    def from_config(cls, config: EnsembleConfig, plans: Sequence[MemberPlan]) -> "Routes":
        return cls(DecisionPath.from_config(config, plans),
                   {kind: DecisionPath.from_config(config.for_kind(kind), plans, where=f"by_kind.{kind}.")
                    for kind in config.by_kind})

    @property
    def routed(self) -> bool:
        """Whether any kind has a route of its own (results then say their kind)."""
        return bool(self.by_kind)

    def path(self, kind: str | None) -> DecisionPath:
        return self.by_kind.get(kind, self.default) if kind is not None else self.default

    @property
    def paths(self) -> tuple[DecisionPath, ...]:
        """Every distinct path: the default first, then the routes' in config order."""
        return (self.default, *self.by_kind.values())

    def index(self, kind: str) -> int:
        """The index into ``paths`` of the path that decides ``kind``."""
        return 1 + list(self.by_kind).index(kind) if kind in self.by_kind else 0

    def thresholds(self) -> dict[str, float]:
        """Each kind's threshold."""
        return {kind: self.path(kind).threshold for kind in INPUT_KINDS}

    def groups(self, kinds: Sequence[str]) -> list[tuple[int, list[int]]]:
        """(index into ``paths``, the rows of that path), for each path that has rows, in ``paths`` order."""
        rows: dict[int, list[int]] = {}
        for row, kind in enumerate(kinds):
            rows.setdefault(self.index(kind), []).append(row)
        return sorted(rows.items())
