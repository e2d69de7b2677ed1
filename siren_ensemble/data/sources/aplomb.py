"""Benign requests from aplomb 0.3.0 (``data/benign_anchors_v1.json``): 30 plain instructions and 20 benign requests
that sound sensitive (XSTest-style: killing a process, household chemicals never to mix, a stage-prop gun, the signs
of an overdose so as to help)."""

from __future__ import annotations

from typing import Iterator

from ...errors import InputError
from ..packages import data_file
from ..records import SafetyRecord
from .files import read_json_list
from .registry import source

PACKAGE = "aplomb"
FILE = "data/benign_anchors_v1.json"


@source("aplomb_anchors", PACKAGE, "benign",
        "benign instructions, 20 of them sensitive-sounding look-alikes (XSTest-style: violent verbs in everyday "
        "tasks, safety questions); off by default", default=False)
def aplomb_anchors() -> Iterator[SafetyRecord]:
    path = data_file(PACKAGE, FILE)
    prompts = read_json_list(path, "benign")
    if not all(isinstance(text, str) and text.strip() for text in prompts):
        raise InputError(f"{path}: `benign` must hold non-empty prompts")
    for text in prompts:
        yield SafetyRecord(label=0, source="aplomb_anchors", text=text)
