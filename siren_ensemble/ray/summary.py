"""What a corpus run printed at its end: texts, flagged, texts/s, failures by reason and the failed rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

#: Failed rows listed one by one; the output's ``errors`` field holds every one.
MAX_LISTED = 20


@dataclass(frozen=True)
class FailedRow:
    id: Any
    reason: str


@dataclass(frozen=True)
class CorpusSummary:
    output: str
    texts: int
    flagged: int
    seconds: float
    #: Rows with a failure, by the kind of their first reason ("text rejected", "input rejected", ...).
    failures: dict[str, int] = field(default_factory=dict)
    #: The first ``MAX_LISTED`` failed rows.
    failed_rows: tuple[FailedRow, ...] = ()

    @property
    def texts_per_second(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def lines(self) -> list[str]:
        lines = [f"{self.output}: {self.texts:,} texts, {self.flagged:,} flagged, {self.failed:,} failed; "
                 f"{self.seconds:.1f} s ({self.texts_per_second:,.1f} texts/s, actor start and model loading included)"]
        for kind, count in sorted(self.failures.items(), key=lambda item: -item[1]):
            lines.append(f"  {kind}: {count:,}")
        for row in self.failed_rows:
            lines.append(f"  id {row.id!r}: {row.reason}")
        if self.failed > len(self.failed_rows):
            lines.append(f"  ... and {self.failed - len(self.failed_rows):,} more: see the `errors` field of {self.output}")
        return lines


def summarise(rows: Iterable[tuple[Any, bool, dict[str, str] | None]], output: str, seconds: float) -> CorpusSummary:
    """From the written rows' ``(id, is_harmful, errors)``."""
    texts = flagged = 0
    failures: Counter[str] = Counter()
    listed: list[FailedRow] = []
    for row_id, is_harmful, errors in rows:
        texts += 1
        flagged += bool(is_harmful)
        if errors:
            reason = next(iter(errors.values()))
            failures[reason.split(":", 1)[0]] += 1
            if len(listed) < MAX_LISTED:
                listed.append(FailedRow(row_id, reason))
    return CorpusSummary(output, texts, flagged, seconds, dict(failures), tuple(listed))
