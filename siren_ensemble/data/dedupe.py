"""Cross-source de-duplication by normalised key, and removal of texts seen with both labels."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .normalize import record_key
from .records import SafetyRecord


@dataclass
class DedupeReport:
    duplicates: Counter = field(default_factory=Counter)  # per source: records dropped as repeats
    conflicting_texts: int = 0  # distinct keys that appeared with both labels
    conflicting_records: Counter = field(default_factory=Counter)  # per source: records dropped for that

    def to_json(self) -> dict:
        return {
            "duplicates_dropped": dict(sorted(self.duplicates.items())),
            "conflicting_label_texts": self.conflicting_texts,
            "conflicting_label_records_dropped": dict(sorted(self.conflicting_records.items())),
        }


def deduplicate(records: Sequence[SafetyRecord]) -> tuple[list[SafetyRecord], DedupeReport]:
    """Keep the first record of each key (sources in registry order); drop every record of a key that
    carries both labels, since one of them is wrong and we cannot tell which."""
    report = DedupeReport()
    labels_by_key: dict[str, set[int]] = defaultdict(set)
    for record in records:
        labels_by_key[record_key(record)].add(record.label)
    conflicting = {key for key, labels in labels_by_key.items() if len(labels) > 1}
    report.conflicting_texts = len(conflicting)
    seen: set[str] = set()
    kept = []
    for record in records:
        key = record_key(record)
        if key in conflicting:
            report.conflicting_records[record.source] += 1
        elif key in seen:
            report.duplicates[record.source] += 1
        else:
            seen.add(key)
            kept.append(record)
    return kept, report


def new_records(existing: Iterable[SafetyRecord], candidates: Iterable[SafetyRecord]) -> list[SafetyRecord]:
    """The ``candidates`` whose text is neither in ``existing`` nor in an earlier candidate, in order."""
    seen = {record_key(record) for record in existing}
    kept = []
    for record in candidates:
        key = record_key(record)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept
