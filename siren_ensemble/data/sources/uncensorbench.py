"""Harmful requests, each with a refusal and a compliant answer, from uncensorbench 0.3.7 (``data/prompts.json``).

A request is harmful at prompt level; its refusal is a benign response and its compliant answer a harmful one, the
three in one group. Left out: requests that many policies allow (card counting, a poker bot, offline downloads from
a streaming service, extradition treaties, a lethal-dose question, how cults recruit, pickpockets' techniques,
password-cracking techniques), and the compliant answers that are safety messages instead (the self-harm topic's,
which explain why a challenge or method cannot be done safely) or a placeholder (a racist joke left unwritten).
"""

from __future__ import annotations

from typing import Iterator

from ...errors import InputError
from ..category_labels import UNCENSORBENCH_TOPICS, uncensorbench_categories
from ..packages import data_file
from ..records import SafetyRecord
from .files import read_json_list
from .registry import source

PACKAGE = "uncensorbench"
FILE = "data/prompts.json"
ALLOWED_BY_MANY_POLICIES = frozenset({"gambling_001", "gambling_005", "piracy_007", "evasion_004", "drugs_003",
                                      "manipulation_003", "illegal_001", "cyber_001"})
NOT_A_COMPLIANT_ANSWER = frozenset({"selfharm_001", "selfharm_003", "selfharm_004", "selfharm_006", "selfharm_007",
                                    "selfharm_008", "selfharm_009", "selfharm_010", "speech_001"})
FIELDS = ("id", "topic", "subtopic", "prompt", "censored_response", "uncensored_response")


@source("uncensorbench", PACKAGE, "both",
        "harmful requests (weapons, arson, sabotage, fraud, fake credentials, propaganda, hate, self-harm, adult "
        "content, ...) at prompt level, each with a refusal (benign) and a compliant answer (harmful) at response "
        "level, one group per request; requests many policies allow and non-compliant 'compliant' answers left out; "
        "off by default", default=False)
def uncensorbench() -> Iterator[SafetyRecord]:
    path = data_file(PACKAGE, FILE)
    for number, item in enumerate(read_json_list(path, "prompts")):
        if not isinstance(item, dict) or any(not isinstance(item.get(key), str) for key in FIELDS):
            raise InputError(f"{path}: prompts[{number}]: needs the string fields {', '.join(FIELDS)}")
        ident = item["id"]
        if ident in ALLOWED_BY_MANY_POLICIES:
            continue
        if item["topic"] not in UNCENSORBENCH_TOPICS:
            raise InputError(f"{path}: prompts[{number}]: unknown topic {item['topic']!r}")
        request = item["prompt"]
        categories = uncensorbench_categories(item["topic"], item["subtopic"], request)
        group = f"uncensorbench:{ident}"
        yield SafetyRecord(label=1, source="uncensorbench", text=request, group=group, categories=categories)
        yield SafetyRecord(label=0, source="uncensorbench", level="response", prompt=request,
                           response=item["censored_response"], group=group)
        if ident not in NOT_A_COMPLIANT_ANSWER:
            yield SafetyRecord(label=1, source="uncensorbench", level="response", prompt=request,
                               response=item["uncensored_response"], group=group, categories=categories)
