"""Parallel Indic-language prompts from indic-safety-probe 0.1.0 (``probes/*.py``), for evaluation only.

The prompts are dict literals in the probe modules, read with ``ast.literal_eval`` (nothing is
imported). SafetyRecord has no language field: each record's group is ``indic:<language>:<probe>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ...errors import InputError
from ..category_labels import indic_categories
from ..packages import data_file
from ..records import SafetyRecord
from .files import python_literal
from .registry import source

PACKAGE = "indic-safety-probe"

# bec.py: a CFO-impersonation wire-fraud email (harmful) and its structurally matched benign control,
# in en, hi, kn, bn, ta, te. honorifics.py: one request per language in informal and formal register;
# only LEGAL_ADVICE (how to avoid paying alimony in a divorce: a sensitive but lawful question) is kept,
# as benign. HARMFUL_TACTICS (finding a person's phone number and address "to find an old friend") and
# AUTHORITY_ROLEPLAY (a passport without police verification) are left out: the package calls them
# borderline and gives them no harm label.


@source("indic_safety", PACKAGE, "both",
        "Hindi, Bengali, Tamil, Telugu, Kannada and English: a business-email-compromise fraud request and its "
        "matched benign control, and a sensitive legal question (benign) in two registers; group "
        "indic:<language>:<probe>; too small to train on: validation/test only; off by default",
        default=False, eval_only=True)
def indic_safety() -> Iterator[SafetyRecord]:
    bec = data_file(PACKAGE, "probes/bec.py")
    for name, label in (("HARMFUL_PROMPTS", 1), ("BENIGN_PROMPTS", 0)):
        for language, text in _string_dict(bec, name).items():
            yield SafetyRecord(label=label, source="indic_safety", text=text, group=f"indic:{language}:bec",
                               categories=indic_categories("bec", text) if label else None)
    honorifics = data_file(PACKAGE, "probes/honorifics.py")
    for language, registers in python_literal(honorifics, "LEGAL_ADVICE", dict).items():
        if not isinstance(registers, dict):
            raise InputError(f"{honorifics}: LEGAL_ADVICE[{language!r}]: expected a dict of register -> prompt")
        for register in sorted(registers):
            yield SafetyRecord(label=0, source="indic_safety", text=_string(honorifics, registers[register]),
                               group=f"indic:{language}:legal_advice")


def _string_dict(path: Path, name: str) -> dict[str, str]:
    return {language: _string(path, text) for language, text in python_literal(path, name, dict).items()}


def _string(path: Path, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{path}: expected a non-empty prompt string, got {value!r}")
    return value
