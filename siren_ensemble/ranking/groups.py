"""Ranking groups: one prompt and the candidate responses to it, each preferred or not.

Built from a split's response-level records, per request (the records' normalised prompt, the key the
splits are grouped by, so a group never straddles two splits):

- a **harmful request** (any record of it is labelled harmful, or it was answered by a refusal source):
  its compliant harmful answers (label 1) are not preferred; its safe answers and refusals (label 0)
  are. Without a safe answer in the data, one templated refusal of the prompt is added.
- a **benign request** (no harmful record): its helpful answers are preferred, any refusal of it is not
  (refusing a benign request is over-refusal). Without a refusal in the data, one templated refusal is
  added: the helpful-vs-refusal check.

A request with nothing to rank against (only refusals of a harmful prompt, only refusals of a benign
one) makes no group. Most requests have one answer in the data, so most groups are that answer and a
templated refusal; pyrit's human-graded answers and arena_hard's pairs give longer lists.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from ..data.normalize import prompt_key
from ..data.records import SafetyRecord, read_dataset
from ..data.refusals import SOURCE as TEMPLATED_REFUSALS, refusal_for
from ..refusal_phrases import looks_like_refusal
from ..text import join_prompt_response

Kind = Literal["refusal", "harmful", "helpful"]
#: Sources whose responses are refusals of the request (so the request was a harmful one).
REFUSAL_SOURCES = frozenset({TEMPLATED_REFUSALS, "pyrit_refusals"})
#: The ``source`` of a refusal added to a group (it is not a record of the split).
ADDED_REFUSAL = "added_templated_refusal"


@dataclass(frozen=True)
class Candidate:
    response: str
    #: What a ranker reads: the prompt and the response joined as the runtime joins them.
    pair_text: str
    preferred: bool
    kind: Kind
    source: str


@dataclass(frozen=True)
class RankingGroup:
    key: str
    prompt: str
    candidates: tuple[Candidate, ...]
    #: The source of the answers that made the group (its harmful answers, or its helpful ones).
    source: str
    harmful_request: bool

    @property
    def kind(self) -> str:
        return "harmful_request" if self.harmful_request else "benign_request"


def read_groups(data: str | Path, split: str, seed: int = 0) -> list[RankingGroup]:
    return build_groups(read_dataset(data, split), seed)


def build_groups(records: Sequence[SafetyRecord], seed: int = 0) -> list[RankingGroup]:
    """Groups in a stable order (by request key); the added refusals are drawn with ``seed`` and the key."""
    by_request: dict[str, list[SafetyRecord]] = defaultdict(list)
    for record in records:
        key = prompt_key(record)
        if key:
            by_request[key].append(record)
    groups = (_group(key, by_request[key], seed) for key in sorted(by_request))
    return [group for group in groups if group is not None]


def _group(key: str, records: list[SafetyRecord], seed: int) -> RankingGroup | None:
    answers = _unique_answers(records)
    if not answers:
        return None
    harmful_request = any(record.label == 1 for record in records) or any(r.source in REFUSAL_SOURCES for r in answers)
    prompt = answers[0].prompt or ""
    candidates = [_candidate(record, harmful_request) for record in answers]
    wanted_kind: Kind = "harmful" if harmful_request else "helpful"
    if not any(candidate.kind == wanted_kind for candidate in candidates):
        return None  # nothing for the preferred answers to be ranked above (or below)
    if not any(candidate.kind == "refusal" for candidate in candidates) and \
            (not harmful_request or not any(candidate.preferred for candidate in candidates)):
        refusal = refusal_for(prompt, random.Random(f"{seed}|{key}"))
        candidates.append(Candidate(refusal, join_prompt_response(prompt, refusal), preferred=harmful_request,
                                    kind="refusal", source=ADDED_REFUSAL))
    sources = Counter(candidate.source for candidate in candidates if candidate.kind == wanted_kind)
    source = min(sources.items(), key=lambda item: (-item[1], item[0]))[0]
    return RankingGroup(key, prompt, tuple(candidates), source, harmful_request)


def _unique_answers(records: list[SafetyRecord]) -> list[SafetyRecord]:
    seen: set[str] = set()
    answers = []
    for record in records:
        if record.level == "response" and record.response and record.response not in seen:
            seen.add(record.response)
            answers.append(record)
    return answers


def _candidate(record: SafetyRecord, harmful_request: bool) -> Candidate:
    response = record.response or ""
    if record.label == 1:
        kind: Kind = "harmful"
    elif record.source in REFUSAL_SOURCES or looks_like_refusal(response):
        kind = "refusal"
    else:
        kind = "helpful"
    # A harmful request prefers anything safe; a benign one prefers its helpful answers to any refusal.
    preferred = kind != "harmful" if harmful_request else kind == "helpful"
    return Candidate(response, record.scored_text, preferred, kind, record.source)
