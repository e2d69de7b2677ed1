"""Harmful requests in English, Hindi, Tamil and Telugu from inspect-india-evals 0.1.0
(``safeguards/datasets/safety.csv``), and benign exam questions in the same languages
(``multilingual/datasets/mmlu_translated.csv``).

Each row is one request (cybercrime, communal violence, financial fraud, misinformation, harassment, deepfakes) with
its translations; the four versions share a group, so they land in one split, and the translations carry
``language``. The file's "Bengali" column is left out: it is Hindi-like text in Devanagari, not Bengali. The set is
harmful only: trained on alone, it would teach that Indic script is harmful, so it needs benign text in the same
languages beside it. Most of its Hindi requests end in " ।" (a space before the danda), which no benign Hindi
source does: the space is dropped, so that a head cannot tell the classes apart by it.
"""

from __future__ import annotations

import re
from typing import Iterator

from ...errors import InputError
from ..category_labels import INDIA_SAFETY_CATEGORIES, india_safety_categories
from ..packages import data_file
from ..records import SafetyRecord
from .files import read_csv_rows
from .registry import source

PACKAGE = "inspect-india-evals"
FILE = "safeguards/datasets/safety.csv"
MMLU_FILE = "multilingual/datasets/mmlu_translated.csv"
#: Column -> language code; the English original carries none, as every English record.
VERSIONS = {"original_prompt": None, "Hindi": "hi", "Tamil": "ta", "Telugu": "te"}
#: The languages of both files: the benign questions keep the ones the harmful requests come in.
LANGUAGES = ("en", "hi", "ta", "te")
_SPACED_DANDA = re.compile(r"\s+(।)")


@source("india_safety", PACKAGE, "harmful",
        "harmful requests (cybercrime, communal violence, financial fraud, misinformation, harassment, deepfakes) in "
        "English with their Hindi, Tamil and Telugu versions, one group per request; harmful only, so it needs "
        "benign Indic text beside it; off by default", default=False, requests=False)
def india_safety() -> Iterator[SafetyRecord]:
    path = data_file(PACKAGE, FILE)
    for line, row in read_csv_rows(path, ("id", "category", *VERSIONS)):
        category = row["category"]
        if category not in INDIA_SAFETY_CATEGORIES or not row["id"]:
            raise InputError(f"{path}: line {line}: unknown category {category!r} or no id")
        categories = india_safety_categories(category, row["original_prompt"])
        for column, language in VERSIONS.items():
            text = _SPACED_DANDA.sub(r"\1", row[column].strip())
            if text:
                yield SafetyRecord(label=1, source="india_safety", text=text, group=f"india_safety:{row['id']}",
                                   categories=categories, language=language)


@source("india_mmlu", PACKAGE, "benign",
        "MMLU exam questions in English with their Hindi, Tamil and Telugu versions, one group per question: benign "
        "questions and instructions in the languages of india_safety; off by default", default=False, requests=False)
def india_mmlu() -> Iterator[SafetyRecord]:
    path = data_file(PACKAGE, MMLU_FILE)
    for line, row in read_csv_rows(path, ("id", "language", "question")):
        question = row["question"].strip()
        if not row["id"] or not question:
            raise InputError(f"{path}: line {line}: needs an id and a question")
        if row["language"] in LANGUAGES:
            yield SafetyRecord(label=0, source="india_mmlu", text=question, group=f"india_mmlu:{row['id']}",
                               language=None if row["language"] == "en" else row["language"])

