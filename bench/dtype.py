"""float32 vs bfloat16 for an ensemble (default: the packaged one): speed, and what the dtype does to scores and decisions.

    .venv/bin/python bench/dtype.py --data SPLIT_DIR [--config CONFIG] [--count 96] [--repeats 2] [--threads 1]

Both dtypes load the same converted weights (bf16 on disk) and score the same test texts, in
alternating rounds. Reported: the time ratio, each member's largest score change, the decisions
that flip at the configured thresholds, and F1 and AUROC on the texts under each dtype: heads
trained on bf16 features read in float32, or heads trained on float32 features read in bf16.
`--repeats 0` skips the timing.
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
    ensembles = {dtype: ensemble_in(args.config, dtype) for dtype in ("float32", "bfloat16")}
    results = {dtype: ensemble.score_batch(texts) for dtype, ensemble in ensembles.items()}
    full, half = results["float32"], results["bfloat16"]
    rows = ["| scorer | max abs score change | decisions flipped | F1 float32 | F1 bfloat16 | AUROC float32 | AUROC bfloat16 |",
            "|---|---|---|---|---|---|---|"]
    members = list(full[0].members)
    threshold = {plan.name: plan.threshold for plan in ensembles["float32"].plans}
    for name in members + ["ensemble"]:
        pick = (lambda r: r.score) if name == "ensemble" else (lambda r, n=name: r.members[n])
        cut = ensembles["float32"].threshold if name == "ensemble" else threshold[name]
        a, b = [pick(r) for r in full], [pick(r) for r in half]
        flipped = sum((x >= cut) != (y >= cut) for x, y in zip(a, b))
        fp32, bf16 = binary_metrics(labels, a, cut), binary_metrics(labels, b, cut)
        rows.append(f"| {name} | {max(abs(x - y) for x, y in zip(a, b)):.4f} | {flipped}/{len(a)} | "
                    f"{fp32.f1:.3f} | {bf16.f1:.3f} | {fp32.auroc:.3f} | {bf16.auroc:.3f} |")
    if not args.repeats:
        return [f"{len(texts)} test texts of {args.data} with {args.config}", "", *rows]
    times = interleaved_best_times({dtype: (lambda e=ensemble: e.score_batch(texts)) for dtype, ensemble in ensembles.items()},
                                   repeats=args.repeats)
    speed = (f"{len(texts)} test texts: float32 {times['float32']:.1f} s, bfloat16 {times['bfloat16']:.1f} s "
             f"(bf16 takes {times['bfloat16'] / times['float32']:.2f}x the fp32 time)")
    return [speed, "", *rows]


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="split directory (its test split is scored)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="ensemble config (default: the packaged one)")
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)


if __name__ == "__main__":
    bench_main(__doc__, arguments, run)
