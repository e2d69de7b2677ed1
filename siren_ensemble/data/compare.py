"""Whether two split directories hold the same records in the same splits and order, apart from some fields.

A new field on the records (``categories``) must not move a text: the feature cache is keyed by the
exact texts of each split, in order, so any change there means extracting every feature again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .records import SPLITS


@dataclass(frozen=True)
class SplitComparison:
    split: str
    old_records: int
    new_records: int
    #: 1-based line of the first record that differs (in a field not ignored); None when all agree.
    first_difference: int | None

    @property
    def same(self) -> bool:
        return self.first_difference is None and self.old_records == self.new_records


def compare_split_dirs(old: str | Path, new: str | Path, ignore: tuple[str, ...] = ("categories",)) -> list[SplitComparison]:
    comparisons = []
    for split in SPLITS:
        before, after = _rows(Path(old) / f"{split}.jsonl", ignore), _rows(Path(new) / f"{split}.jsonl", ignore)
        differing = next((line for line, (a, b) in enumerate(zip(before, after), start=1) if a != b), None)
        if differing is None and len(before) != len(after):
            differing = min(len(before), len(after)) + 1
        comparisons.append(SplitComparison(split, len(before), len(after), differing))
    return comparisons


def _rows(path: Path, ignore: tuple[str, ...]) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [{key: value for key, value in json.loads(line).items() if key not in ignore} for line in handle if line.strip()]
