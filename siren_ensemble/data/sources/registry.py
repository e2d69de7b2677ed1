"""The registry of data sources: adding a source is one decorated loader function."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ...errors import InputError
from ..records import SafetyRecord

Loader = Callable[[], Iterable[SafetyRecord]]


@dataclass(frozen=True)
class Source:
    name: str
    package: str | None  # the data package (a key of DATA_PACKAGES) whose files it reads; None: needs none
    loader: Loader
    labels: str  # what the source contributes, for the README and the CLI: "harmful", "benign", "both"
    description: str
    default: bool = True  # built unless --sources names others; off for noisy or ambiguous sources
    eval_only: bool = False  # never in train (e.g. a dataset whose canary asks not to train on it)
    requests: bool = True  # its prompt-level texts are requests to an assistant (chat turns are not)

    def load(self) -> Iterator[SafetyRecord]:
        for record in self.loader():
            if record.source != self.name:
                raise AssertionError(f"loader {self.name!r} yielded a record of source {record.source!r}")
            yield record


SOURCES: dict[str, Source] = {}


def source(name: str, package: str | None, labels: str, description: str, *, default: bool = True,
           eval_only: bool = False, requests: bool = True) -> Callable[[Loader], Loader]:
    """Register ``loader`` as the source ``name``; its records must carry ``source=name``."""

    def register(loader: Loader) -> Loader:
        if name in SOURCES:
            raise ValueError(f"data source {name!r} registered twice")
        SOURCES[name] = Source(name, package, loader, labels, description, default, eval_only, requests)
        return loader

    return register


def select_sources(names: Iterable[str] | None = None) -> list[Source]:
    """The named sources in registry order, or the default ones; an unknown name gets a did-you-mean."""
    if not names:
        return [entry for entry in SOURCES.values() if entry.default]
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        if name not in SOURCES:
            close = difflib.get_close_matches(name, list(SOURCES), n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise InputError(f"unknown data source {name!r}.{hint} Available: {', '.join(SOURCES)}.")
    return [SOURCES[name] for name in SOURCES if name in wanted]
