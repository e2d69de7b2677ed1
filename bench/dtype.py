"""float32 against other dtypes (bfloat16, int8) for an ensemble (default: the packaged one): speed, and what
the dtype does to scores and decisions.

    .venv/bin/python bench/dtype.py --data SPLIT_DIR [--config CONFIG] [--dtypes bfloat16,int8] [--count 96] [--repeats 2] [--threads 1]

Every dtype loads the same converted weights (bf16 on disk) and scores the same test texts, in
alternating rounds. Reported per compared dtype: the time ratio to float32, each member's largest
score change against float32, the decisions that flip at the configured thresholds, and F1 and
AUROC on the texts under both: heads trained on bf16 features read in float32, or heads trained on
float32 features read in bf16. `--repeats 0` skips the timing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from common import bench_main, interleaved_best_times

from siren_ensemble import Ensemble
from siren_ensemble.config import EnsembleConfig
from siren_ensemble.data.records import read_dataset
from siren_ensemble.default_ensemble import DEFAULT_CONFIG
from siren_ensemble.evaluation.metrics import binary_metrics

REFERENCE = "float32"


def ensemble_in(config: Path, dtype: str) -> Ensemble:
    raw = yaml.safe_load(config.read_text())
    for member in raw["members"]:
        member["dtype"] = dtype
    return Ensemble.from_config(EnsembleConfig.from_dict(raw, base_dir=config.resolve().parent, source=str(config)))


def spread(records: list, count: int) -> list:
    """Every k-th record, so both classes and all sources appear."""
    step = max(1, len(records) // count)
    return records[::step][:count]


def run(_workdir: Path, args: argparse.Namespace) -> list[str]:
    records = spread(read_dataset(args.data, "test"), args.count)
    texts, labels = [r.scored_text for r in records], [r.label for r in records]
    compared = [dtype for dtype in args.dtypes if dtype != REFERENCE]
    ensembles = {dtype: ensemble_in(args.config, dtype) for dtype in (REFERENCE, *compared)}
    results = {dtype: ensemble.score_batch(texts) for dtype, ensemble in ensembles.items()}
    lines = [f"{len(texts)} test texts of {args.data} with {args.config}", ""]
    if args.repeats:
        times = interleaved_best_times({dtype: (lambda e=ensemble: e.score_batch(texts)) for dtype, ensemble in ensembles.items()},
                                       repeats=args.repeats)
        lines += [f"{dtype}: {times[dtype]:.1f} s" + ("" if dtype == REFERENCE else
                  f" ({times[dtype] / times[REFERENCE]:.2f}x the {REFERENCE} time, {times[REFERENCE] / times[dtype]:.2f}x its speed)")
                  for dtype in ensembles] + [""]
    for dtype in compared:
        lines += [f"{dtype} against {REFERENCE}:", "", *drift_rows(ensembles[REFERENCE], results[REFERENCE], results[dtype], labels, dtype), ""]
    return lines


def drift_rows(reference: Ensemble, full: list, other: list, labels: list[int], dtype: str) -> list[str]:
    """Per member and for the ensemble: largest score change, flipped decisions, F1 and AUROC under both dtypes."""
    rows = [f"| scorer | max abs score change | decisions flipped | F1 {REFERENCE} | F1 {dtype} | AUROC {REFERENCE} | AUROC {dtype} |",
            "|---|---|---|---|---|---|---|"]
    threshold = {plan.name: plan.threshold for plan in reference.plans}
    for name in list(full[0].members) + ["ensemble"]:
        pick = (lambda r: r.score) if name == "ensemble" else (lambda r, n=name: r.members[n])
        cut = reference.threshold if name == "ensemble" else threshold[name]
        pairs = [(pick(x), pick(y), label) for x, y, label in zip(full, other, labels)]
        pairs = [pair for pair in pairs if pair[0] is not None and pair[1] is not None]  # a cascade member may not run
        if not pairs:
            rows.append(f"| {name} | (not run on these texts) | | | | | |")
            continue
        a, b, labels_run = [pair[0] for pair in pairs], [pair[1] for pair in pairs], [pair[2] for pair in pairs]
        flipped = sum((x >= cut) != (y >= cut) for x, y in zip(a, b))
        before, after = binary_metrics(labels_run, a, cut), binary_metrics(labels_run, b, cut)
        rows.append(f"| {name} | {max(abs(x - y) for x, y in zip(a, b)):.4f} | {flipped}/{len(a)} | "
                    f"{before.f1:.3f} | {after.f1:.3f} | {before.auroc:.3f} | {after.auroc:.3f} |")
    return rows


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="split directory (its test split is scored)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="ensemble config (default: the packaged one)")
    parser.add_argument("--dtypes", type=lambda value: value.split(","), default=["bfloat16"],
                        help="dtypes compared with float32, comma-separated (bfloat16, float16, int8)")
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)


if __name__ == "__main__":
    bench_main(__doc__, arguments, run)
