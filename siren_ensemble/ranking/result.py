"""What a ranking answers: the candidates, safest first, each with its score and the members' scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence, get_args

#: Rank by the SIREN score of each (prompt, candidate) pair, by the SRR rankers beside the members' heads, or by
#: the SRR rankers behind the ensemble's verdict ("guarded": a candidate the ensemble flags ranks after every one it passes).
Method = Literal["siren", "srr", "guarded"]
METHODS: tuple[str, ...] = get_args(Method)
#: What a caller may ask for: a method, or "auto" ("guarded" where a member has a ranker, else "siren").
AUTO = "auto"
RequestedMethod = Literal["auto", Method]
REQUESTED_METHODS: tuple[str, ...] = (AUTO, *METHODS)


@dataclass(frozen=True)
class RankedCandidate:
    #: Position of the candidate in the input.
    index: int
    #: Lower ranks first: the ensemble's harm score ("siren"), the mean of the members' SRR risks ("srr"), or that
    #: mean plus 1 where the ensemble flags the pair ("guarded").
    score: float
    #: Each member's score of this candidate (its head's, or its ranker's); ``None`` where it failed.
    members: dict[str, float | None]
    errors: dict[str, str] = field(default_factory=dict)
    #: "guarded" only: whether the ensemble flagged the (prompt, candidate) pair (a failed pair counts as flagged).
    flagged: bool | None = None

    def to_dict(self) -> dict:
        row = {"index": self.index, "score": self.score, "members": self.members}
        if self.flagged is not None:
            row["flagged"] = self.flagged
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
           errors: Sequence[dict[str, str]] | None = None, flagged: Sequence[bool] | None = None) -> RankResult:
    errors = errors if errors is not None else [{} for _ in scores]
    flagged = flagged if flagged is not None else [None for _ in scores]
    candidates = [RankedCandidate(index, float(score), dict(member_scores), dict(candidate_errors), flag)
                  for index, (score, member_scores, candidate_errors, flag)
                  in enumerate(zip(scores, members, errors, flagged))]
    return RankResult(method, tuple(sorted(candidates, key=lambda candidate: (candidate.score, candidate.index))))
