"""Group-aware, seeded split assignment.

Records that share a declared ``group`` or the same request (normalised prompt) form one component,
and a whole component goes to one split, so no behaviour, pair or conversation straddles two
splits. Components are stratified by their main source: each source's components are shuffled by a
seeded hash of their name and dealt out so that every source is split close to the fractions, even
a source made of a few large groups (~100 behaviours with ~14 rewordings each).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Sequence

from ..errors import InputError
from .normalize import prompt_key, record_key
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
        request = prompt_key(record)
        for link in (f"group:{record.group}" if record.group else None, f"request:{request}" if request else None):
            if link is None:
                continue
            if link in first_with:
                parent[find(index)] = find(first_with[link])
            else:
                first_with[link] = index
    names: dict[int, str] = {}
    for index, record in enumerate(records):
        root = find(index)
        name = record.group or f"{record.source}:{record_key(record)}"
        names[root] = min(names.get(root, name), name)
    return [replace(record, group=names[find(index)]) for index, record in enumerate(records)]


def assign_splits(records: Sequence[SafetyRecord], seed: int, fractions: SplitFractions,
                  eval_only_sources: frozenset[str] = frozenset()) -> dict[str, list[SafetyRecord]]:
    """Records (with component groups) by split. A component holding an eval-only source never goes to
    train: it is dealt to validation or test in proportion to their fractions."""
    components: dict[str, list[SafetyRecord]] = defaultdict(list)
    for record in records:
        components[record.group].append(record)
    strata: dict[tuple[bool, str], list[str]] = defaultdict(list)
    for group, members in components.items():
        held_out = any(record.source in eval_only_sources for record in members)
        main_source = min(Counter(r.source for r in members).most_common(), key=lambda item: (-item[1], item[0]))[0]
        strata[(held_out, main_source)].append(group)
    splits: dict[str, list[SafetyRecord]] = {name: [] for name in SPLITS}
    for (held_out, _), groups in sorted(strata.items()):
        bounds = _bounds(fractions, held_out)
        groups.sort(key=lambda group: unit_hash(seed, "split", group))
        total = sum(len(components[group]) for group in groups)
        dealt = 0
        for group in groups:
            size = len(components[group])
            position = (dealt + size / 2) / total  # where the component's middle falls in the stratum
            name = next(name for name, bound in bounds if position < bound)
            splits[name].extend(components[group])
            dealt += size
    return splits


def _bounds(fractions: SplitFractions, held_out: bool) -> list[tuple[str, float]]:
    """Cumulative upper bounds per split; held-out strata share validation and test only."""
    if held_out:
        rest = fractions.validation + fractions.test
        if rest <= 0:
            raise InputError("eval-only sources need a non-zero validation or test fraction")
        return [("validation", fractions.validation / rest), ("test", float("inf"))]
    return [("train", fractions.train), ("validation", fractions.train + fractions.validation), ("test", float("inf"))]
