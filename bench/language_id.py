"""Language ID over a split directory: what it costs per text, and which records the config's `languages` rule reads
as written in an unvalidated language (by language, source and split), with the English ones it would misread.

    .venv/bin/python bench/language_id.py --data SPLIT_DIR [--config CONFIG]

Prints the time per text of the language-ID model (the whole build, one text at a time, as the runtime reads
them), then the records the rule reads as unvalidated, and the ASCII-only ones among them for a reader to check
(an English text read as another language would be one of these).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from common import bench_main

from siren_ensemble.config import load_config
from siren_ensemble.data.records import read_dataset
from siren_ensemble.default_ensemble import DEFAULT_CONFIG
from siren_ensemble.language import LanguagePolicy, detect_languages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="a split directory (train, validation, test)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="whose `languages` rule to apply")


def run(_workdir: Path, args: argparse.Namespace) -> list[str]:
    records = {split: read_dataset(args.data, split) for split in ("train", "validation", "test")}
    everything = [(split, record) for split, rows in records.items() for record in rows]
    texts = [record.scored_text for _, record in everything]
    detect_languages(texts[:1])  # the model loads once, outside the timing
    started = time.perf_counter()
    detect_languages(texts)
    per_text_ms = (time.perf_counter() - started) * 1000 / len(texts)
    policy = LanguagePolicy.from_config(load_config(args.config).languages)
    unvalidated = [(split, record, reading) for (split, record), reading in zip(everything, policy.read(texts))
                   if reading.unvalidated]
    lines = [f"language ID: {len(texts)} texts, {per_text_ms:.3f} ms per text",
             f"rule: validated {sorted(policy.validated)}, min_confidence {policy.min_confidence}, "
             f"min_letters {policy.min_letters}",
             f"read as unvalidated: {len(unvalidated)} ({len(unvalidated) / len(texts):.2%}), "
             f"harmful {sum(record.label for _, record, _ in unvalidated)}",
             f"  by language: {Counter(reading.language for *_, reading in unvalidated).most_common()}",
             f"  by source: {Counter(record.source for _, record, _ in unvalidated).most_common()}",
             f"  by split (benign of all benign): " + ", ".join(
                 f"{split} {sum(1 for s, r, _ in unvalidated if s == split and r.label == 0)}/"
                 f"{sum(1 for r in rows if r.label == 0)}" for split, rows in records.items()),
             "  ASCII-only among them (check by eye: an English one would be a misreading):"]
    lines += [f"    {reading.language} {record.source}: {record.scored_text[:80]!r}"
              for _, record, reading in unvalidated if record.scored_text.isascii()]
    return lines


if __name__ == "__main__":
    bench_main(__doc__, add_arguments, run)
