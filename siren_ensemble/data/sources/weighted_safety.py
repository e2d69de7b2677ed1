"""Harmful requests and matched benign look-alikes shipped in weighted-safety-refusal 0.1.1 (``dataset.jsonl``)."""

from __future__ import annotations

import re
from typing import Iterator

from ...errors import InputError
from ..category_labels import WEIGHTED_SAFETY_CATEGORIES, weighted_safety_categories
from ..packages import data_file
from ..records import SafetyRecord
from .files import read_jsonl
from .registry import source

PACKAGE = "weighted-safety-refusal"
FILE = "dataset.jsonl"

# Harmful prompts of prompt_injection and data_exfiltration ask the assistant to drop its instructions
# or leak its own prompt, context or secrets: not harmful content, so they are left out (their benign
# look-alikes are kept). Three jailbreaking prompts are a role-play frame with no harmful request in it.
HARMFUL_CATEGORIES = tuple(WEIGHTED_SAFETY_CATEGORIES)
FRAME_ONLY = frozenset({"jailbreaking_h2", "jailbreaking_h4", "jailbreaking_h5"})
_ID = re.compile(r"(?P<category>[a-z_]+)_(?P<kind>[hb])(?P<number>\d+)")


@source("weighted_safety", PACKAGE, "both",
        "hand-written harmful requests (toxicity/hate, malware, disinformation, jailbreak-framed) and matched "
        "benign look-alikes (purpose-framed: training, teaching, fiction); a harmful prompt and the look-alike "
        "of its number share a group; prompt-injection and data-exfiltration harmful prompts and 3 payload-less "
        "jailbreak frames left out (not harmful content); off by default", default=False)
def weighted_safety() -> Iterator[SafetyRecord]:
    path = data_file(PACKAGE, FILE)
    for number, item in enumerate(read_jsonl(path), start=1):
        try:
            ident, text, category, kind = item["id"], item["input"], item["metadata"]["category"], item["metadata"]["type"]
        except (KeyError, TypeError) as error:
            raise InputError(f"{path}: line {number}: missing field {error}") from None
        match = _ID.fullmatch(ident)
        if match is None or match["category"] != category or kind not in ("harmful", "benign"):
            raise InputError(f"{path}: line {number}: unexpected id {ident!r} for category {category!r}, type {kind!r}")
        # The file numbers each benign look-alike after a harmful prompt (close pairs in misinformation,
        # looser elsewhere): the two share a group, so a pair lands in one split.
        group = f"weighted_safety:{category}:{match['number']}"
        if kind == "benign":
            yield SafetyRecord(label=0, source="weighted_safety", text=text, group=group)
        elif category in HARMFUL_CATEGORIES and ident not in FRAME_ONLY:
            yield SafetyRecord(label=1, source="weighted_safety", text=text, group=group,
                               categories=weighted_safety_categories(category, text))
