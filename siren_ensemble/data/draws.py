"""How the generated sets (templated refusals, scenarios, hard cases) draw their records and templates.

Two ways, chosen by ``BuildOptions.draws_by_record``:

- sequential (what the committed heads' split was built with): one seeded generator per set, drawn in
  order over the pool. Adding one source reshuffles every generated record, so a build that grows
  re-extracts ~2,000 generated texts per member.
- by record: which records a set takes is a seeded hash of each record, and the template a record gets
  is drawn from a generator seeded by that record alone. A build that grows keeps the generated records
  it had (but for the few a new record outranks), so the per-text feature cache extracts only new texts.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence, TypeVar

from .splits import unit_hash

Item = TypeVar("Item")


class SequentialDraws:
    def __init__(self, seed: int, purpose: str):
        self._rng = random.Random(seed)

    def sample(self, items: Sequence[Item], count: int, key: Callable[[Item], str]) -> list[Item]:
        return self._rng.sample(list(items), min(count, len(items)))

    def rng_for(self, key: str) -> random.Random:
        return self._rng


class DrawsByRecord:
    def __init__(self, seed: int, purpose: str):
        self._seed, self._purpose = seed, purpose

    def sample(self, items: Sequence[Item], count: int, key: Callable[[Item], str]) -> list[Item]:
        ranked = sorted(items, key=lambda item: (unit_hash(self._seed, self._purpose, key(item)), key(item)))
        return ranked[:count]

    def rng_for(self, key: str) -> random.Random:
        return random.Random(f"{self._seed}|{self._purpose}|{key}")


Draws = SequentialDraws | DrawsByRecord


def draws(seed: int, purpose: str, by_record: bool) -> Draws:
    return DrawsByRecord(seed, purpose) if by_record else SequentialDraws(seed, purpose)
