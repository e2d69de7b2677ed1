"""What a ranking answers: the candidates, safest first, each with its score and the members' scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

#: Rank by the SIREN score of each (prompt, candidate) pair, or by the SRR rankers beside the members' heads.
METHODS = ("siren", "srr")


@dataclass(frozen=True)
class RankedCandidate:
    #: Position of the candidate in the input.
    index: int
    #: Lower ranks first: the ensemble's harm score ("siren"), or the mean of the members' SRR risks ("srr").
    score: float
    #: Each member's score of this candidate (its head's, or its ranker's); ``None`` where it failed.
    members: dict[str, float | None]
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        row = {"index": self.index, "score": self.score, "members": self.members}
        if self.errors:
            row["errors"] = self.errors
        return row


@dataclass(frozen=True)
class RankResult:
    method: str
    #: Safest first; equal scores keep the input order.
    candidates: tuple[RankedCandidate, ...]

    @property
    def best(self) -> RankedCandidate:
        return self.candidates[0]

    @property
    def order(self) -> list[int]:
        return [candidate.index for candidate in self.candidates]

    def to_dict(self) -> dict:
        return {"method": self.method, "ranking": [candidate.to_dict() for candidate in self.candidates]}


def ranked(method: str, scores: Sequence[float], members: Sequence[dict[str, float | None]],
           errors: Sequence[dict[str, str]] | None = None) -> RankResult:
    errors = errors if errors is not None else [{} for _ in scores]
    candidates = [RankedCandidate(index, float(score), dict(member_scores), dict(candidate_errors))
                  for index, (score, member_scores, candidate_errors) in enumerate(zip(scores, members, errors))]
    return RankResult(method, tuple(sorted(candidates, key=lambda candidate: (candidate.score, candidate.index))))
