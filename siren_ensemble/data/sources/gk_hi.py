"""General-knowledge questions in Hindi from gk-hi 1.0.0 (``questions.py``, ``GK_QUESTIONS``): benign Hindi
questions beside india_safety's harmful requests. The file is a Python literal, read with ``ast.literal_eval``."""

from __future__ import annotations

from typing import Iterator

from ...errors import InputError
from ..packages import data_file
from ..records import SafetyRecord
from .files import python_literal
from .registry import source

PACKAGE = "gk-hi"
FILE = "questions.py"


@source("gk_hi", PACKAGE, "benign",
        "general-knowledge questions in Hindi (geography, history, science, sport); off by default",
        default=False, requests=False)
def gk_hi() -> Iterator[SafetyRecord]:
    path = data_file(PACKAGE, FILE)
    for number, item in enumerate(python_literal(path, "GK_QUESTIONS", list)):
        question = item.get("question") if isinstance(item, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"{path}: GK_QUESTIONS[{number}]: needs a non-empty `question`")
        yield SafetyRecord(label=0, source="gk_hi", text=question.strip(), language="hi")
