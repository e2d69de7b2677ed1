"""Group-aware, seeded split assignment.

Records that share a declared ``group`` or the same request (normalised prompt) form one component,
and a whole component goes to one split, so no behaviour, pair or conversation straddles two
splits. The split of a component depends only on the seed and the component's name (a hash), so it
does not move when other sources are added or capped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Sequence

from ..errors import InputError
from .normalize import prompt_key
from .records import SPLITS, SafetyRecord


@dataclass(frozen=True)
class SplitFractions:
    train: float = 0.70
    validation: float = 0.15
    test: float = 0.15

    def __post_init__(self):
        values = (self.train, self.validation, self.test)
        if any(value < 0 for value in values) or abs(sum(values) - 1.0) > 1e-6:
            raise InputError(f"split fractions must be non-negative and sum to 1, got {values}")


def unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (sha256, not Python's salted hash)."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def connected_groups(records: Sequence[SafetyRecord]) -> list[SafetyRecord]:
    """Each record with ``group`` set to its component: records linked by a shared group or request."""
    parent = list(range(len(records)))

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    first_with: dict[str, int] = {}
    for index, record in enumerate(records):
        for link in (f"group:{record.group}" if record.group else None, f"request:{prompt_key(record)}"):
            if link is None:
                continue
            if link in first_with:
                parent[find(index)] = find(first_with[link])
            else:
                first_with[link] = index
    names: dict[int, str] = {}
    for index, record in enumerate(records):
        root = find(index)
        name = record.group or f"{record.source}:{prompt_key(record)}"
        names[root] = min(names.get(root, name), name)
    return [replace(record, group=names[find(index)]) for index, record in enumerate(records)]


def assign_splits(records: Sequence[SafetyRecord], seed: int, fractions: SplitFractions,
                  eval_only_sources: frozenset[str] = frozenset()) -> dict[str, list[SafetyRecord]]:
    """Records (with component groups) by split. A component holding an eval-only source never goes to
    train: it is placed in validation or test in proportion to their fractions."""
    eval_only_groups = {record.group for record in records if record.source in eval_only_sources}
    held_out = fractions.validation + fractions.test
    splits: dict[str, list[SafetyRecord]] = {name: [] for name in SPLITS}
    for record in records:
        draw = unit_hash(seed, "split", record.group)
        if record.group in eval_only_groups:
            if held_out <= 0:
                raise InputError("eval-only sources need a non-zero validation or test fraction")
            name = "validation" if draw * held_out < fractions.validation else "test"
        elif draw < fractions.train:
            name = "train"
        elif draw < fractions.train + fractions.validation:
            name = "validation"
        else:
            name = "test"
        splits[name].append(record)
    return splits
