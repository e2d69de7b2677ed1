"""float32 vs bfloat16 for the default ensemble: speed, and what bf16 does to scores and decisions.

    .venv/bin/python bench/dtype.py --data SPLIT_DIR [--count 96] [--threads 1]

Both dtypes load the same converted weights (bf16 on disk) and score the same test texts, in
alternating rounds. Reported: the time ratio, each member's largest score change, the decisions
that flip at the configured thresholds, and F1 on the texts under each dtype.
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


def ensemble_in(dtype: str) -> Ensemble:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for member in raw["members"]:
        member["dtype"] = dtype
    return Ensemble.from_config(EnsembleConfig.from_dict(raw, base_dir=DEFAULT_CONFIG.parent, source=str(DEFAULT_CONFIG)))


def spread(records: list, count: int) -> list:
    """Every k-th record, so both classes and all sources appear."""
    step = max(1, len(records) // count)
    return records[::step][:count]


def run(_workdir: Path, args: argparse.Namespace) -> list[str]:
    records = spread(read_dataset(args.data, "test"), args.count)
    texts, labels = [r.scored_text for r in records], [r.label for r in records]
    ensembles = {dtype: ensemble_in(dtype) for dtype in ("float32", "bfloat16")}
    results = {dtype: ensemble.score_batch(texts) for dtype, ensemble in ensembles.items()}
    times = interleaved_best_times({dtype: (lambda e=ensemble: e.score_batch(texts)) for dtype, ensemble in ensembles.items()},
                                   repeats=args.repeats)
    full, half = results["float32"], results["bfloat16"]
    rows = ["| scorer | max abs score change | decisions flipped | F1 float32 | F1 bfloat16 |", "|---|---|---|---|---|"]
    members = list(full[0].members)
    threshold = {plan.name: plan.threshold for plan in ensembles["float32"].plans}
    for name in members + ["ensemble"]:
        pick = (lambda r: r.score) if name == "ensemble" else (lambda r, n=name: r.members[n])
        cut = ensembles["float32"].threshold if name == "ensemble" else threshold[name]
        a, b = [pick(r) for r in full], [pick(r) for r in half]
        flipped = sum((x >= cut) != (y >= cut) for x, y in zip(a, b))
        rows.append(f"| {name} | {max(abs(x - y) for x, y in zip(a, b)):.4f} | {flipped}/{len(a)} | "
                    f"{binary_metrics(labels, a, cut).f1:.3f} | {binary_metrics(labels, b, cut).f1:.3f} |")
    speed = (f"{len(texts)} test texts: float32 {times['float32']:.1f} s, bfloat16 {times['bfloat16']:.1f} s "
             f"(bf16 takes {times['bfloat16'] / times['float32']:.2f}x the fp32 time)")
    return [speed, "", *rows]


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="split directory (its test split is scored)")
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)


if __name__ == "__main__":
    bench_main(__doc__, arguments, run)
