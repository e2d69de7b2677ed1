"""Harmful requests in English, Hindi, Tamil and Telugu from inspect-india-evals 0.1.0
(``safeguards/datasets/safety.csv``).

Each row is one request (cybercrime, communal violence, financial fraud, misinformation, harassment, deepfakes) with
its translations; the four versions share a group, so they land in one split, and the translations carry
``language``. The file's "Bengali" column is left out: it is Hindi-like text in Devanagari, not Bengali. The set is
harmful only: trained on alone, it would teach that Indic script is harmful, so it needs benign text in the same
languages beside it.
"""

from __future__ import annotations

import csv
from typing import Iterator

from ...errors import InputError
from ..category_labels import INDIA_SAFETY_CATEGORIES, india_safety_categories
from ..packages import data_file
from ..records import SafetyRecord
from .registry import source

PACKAGE = "inspect-india-evals"
FILE = "safeguards/datasets/safety.csv"
#: Column -> language code; the English original carries none, as every English record.
VERSIONS = {"original_prompt": None, "Hindi": "hi", "Tamil": "ta", "Telugu": "te"}


@source("india_safety", PACKAGE, "harmful",
        "harmful requests (cybercrime, communal violence, financial fraud, misinformation, harassment, deepfakes) in "
        "English with their Hindi, Tamil and Telugu versions, one group per request; harmful only, so it needs "
        "benign Indic text beside it; off by default", default=False)
def india_safety() -> Iterator[SafetyRecord]:
    path = data_file(PACKAGE, FILE)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in ("id", "category", *VERSIONS) if column not in (reader.fieldnames or ())]
        if missing:
            raise InputError(f"{path}: missing columns {', '.join(missing)}")
        for row in reader:
            category = row["category"]
            if category not in INDIA_SAFETY_CATEGORIES or not row["id"]:
                raise InputError(f"{path}: line {reader.line_num}: unknown category {category!r} or no id")
            categories = india_safety_categories(category, row["original_prompt"])
            for column, language in VERSIONS.items():
                text = row[column].strip()
                if text:
                    yield SafetyRecord(label=1, source="india_safety", text=text, group=f"india_safety:{row['id']}",
                                       categories=categories, language=language)
