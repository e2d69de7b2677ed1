"""Harmful requests and benign ones, some XSTest-style, from redharness 0.1.0 (``datasets/data/demo_behaviors.json``):
``expected`` says should_refuse (harmful) or should_comply (benign)."""

from __future__ import annotations

from typing import Iterator

from ...errors import InputError
from ..category_labels import keyword_only
from ..packages import data_file
from ..records import SafetyRecord
from .files import read_json_list
from .registry import source

PACKAGE = "redharness"
FILE = "datasets/data/demo_behaviors.json"
LABELS = {"should_refuse": 1, "should_comply": 0}


@source("redharness", PACKAGE, "both",
        "harmful requests (malware, phishing, fraud, doxxing, harassment, hate, disinformation) and benign ones, 8 "
        "XSTest-style (killing a process, shooting photos, weapons in a video game); off by default", default=False)
def redharness() -> Iterator[SafetyRecord]:
    path = data_file(PACKAGE, FILE)
    for number, item in enumerate(read_json_list(path, "behaviors")):
        text, expected = (item.get("prompt"), item.get("expected")) if isinstance(item, dict) else (None, None)
        if not isinstance(text, str) or expected not in LABELS:
            raise InputError(f"{path}: behaviors[{number}]: needs `prompt` and `expected` (one of {', '.join(LABELS)})")
        label = LABELS[expected]
        yield SafetyRecord(label=label, source="redharness", text=text, categories=keyword_only(text) if label else None)
