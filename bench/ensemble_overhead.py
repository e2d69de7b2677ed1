"""Ensemble overhead: three members in one ensemble vs the sum of their single-member times,
and three heads sharing one backbone's forward pass vs the same heads on separate backbone copies.

    .venv/bin/python bench/ensemble_overhead.py [--texts 16] [--dtype float32]
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

def backbone_copies(model: Path, workdir: Path, count: int) -> list[Path]:
    """Directories linking to the same files: different paths, so the ensemble loads each separately."""
    copies = []
    for index in range(count):
        copy = workdir / f"backbone-copy-{index}"
        copy.mkdir(exist_ok=True)
        for item in model.iterdir():
            link = copy / item.name
            if not link.exists():
                os.symlink(item, link)
        copies.append(copy)
    return copies


def run(workdir: Path, text_count: int = 16, dtype: str = "float32", repeats: int = 2) -> list[common.Table]:
    model = common.safetensors_copy(workdir)
    heads = list(common.heads(workdir, model).values())
    copies = backbone_copies(model, workdir, len(heads))
    separate = common.ensemble_for(model, heads, dtype, models=copies)
    shared = common.ensemble_for(model, heads, dtype)
    singles = [common.ensemble_for(model, [head], dtype, models=[copy]) for head, copy in zip(heads, copies)]
    texts = common.mixed_texts(shared._passes[0].backbone.tokenizer, text_count, longest=192)

    runs = {"separate": lambda: separate.score_batch(texts), "shared": lambda: shared.score_batch(texts)}
    runs.update({f"single{index}": (lambda e=single: e.score_batch(texts)) for index, single in enumerate(singles)})
    for run_once in runs.values():
        run_once()  # warm-up
    times = common.interleaved_best_times(runs, repeats)
    singles_sum = sum(times[f"single{index}"] for index in range(len(singles)))
    scores_separate = [r.score for r in separate.score_batch(texts)]
    scores_shared = [r.score for r in shared.score_batch(texts)]
    difference = max(abs(a - b) for a, b in zip(scores_separate, scores_shared))
    rows = [
        ["sum of three single-member ensembles", f"{singles_sum:.2f}", "1.00x"],
        ["three members, three backbone copies", f"{times['separate']:.2f}", f"{times['separate'] / singles_sum:.2f}x"],
        ["three members sharing one backbone", f"{times['shared']:.2f}", f"{times['shared'] / singles_sum:.2f}x"],
    ]
    for row in rows:
        print(" | ".join(row), flush=True)
    del separate, shared, singles
    gc.collect()
    return [common.Table(
        f"Ensemble overhead, {text_count} texts, {dtype}, heads reading {' / '.join(common.HEAD_LAYERS)} "
        f"(shared vs separate max abs score diff {difference:.1e})",
        ["setup", "seconds", "vs sum of singles"], rows,
    )]


def main() -> None:
    def add_arguments(parser):
        parser.add_argument("--texts", type=int, default=16)
        parser.add_argument("--dtype", default="float32")
        parser.add_argument("--repeats", type=int, default=2)
    common.bench_main(__doc__, add_arguments, lambda workdir, args: [t.markdown() for t in run(workdir, args.texts, args.dtype, args.repeats)])


if __name__ == "__main__":
    main()
