"""Throughput and roofline: ours vs llm-siren's SirenGuard on SmolLM2-135M, same weights, head, texts and dtype.

Prints real tokens/s for batch sizes 1, 8 and 32, their ratio, the max |score difference|, and
the achieved backbone FLOP/s over a bf16/fp32 matmul peak measured in the same run.

    .venv/bin/python bench/throughput.py [--texts 16] [--dtypes float32,bfloat16] [--batch-sizes 1,8,32]
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

BATCH_SIZES = (1, 8, 32)


def score_in_batches(score_batch, texts: list[str], batch_size: int) -> list[float]:
    scores = []
    for start in range(0, len(texts), batch_size):
        scores += [result.score for result in score_batch(texts[start:start + batch_size])]
    return scores


def run(workdir: Path, text_count: int = 16, dtypes=("float32", "bfloat16"), repeats: int = 2,
        batch_sizes=BATCH_SIZES) -> list[common.Table]:
    model = common.safetensors_copy(workdir)
    heads = dict(list(common.heads(workdir, model).items())[:2])
    throughput, roofline = [], []
    for dtype in dtypes:
        peak = common.matmul_peak(common.DTYPES[dtype])
        for head_name, head in heads.items():
            ours = common.ensemble_for(model, [head], dtype, batching={"max_tokens": 16384, "max_texts": 64})
            backbone = ours._passes[0].backbone
            texts = common.mixed_texts(backbone.tokenizer, text_count)
            tokens = common.token_count(backbone.tokenizer, texts)
            lengths = [len(item.ids) for item in backbone.encode([t for t in texts], 2048)]
            theirs = common.siren_guard_for(model, head, dtype)
            sizes = batch_sizes if head_name.startswith("all") else batch_sizes[-1:]
            for batch_size in sizes:
                our_scores = score_in_batches(ours.score_batch, texts, batch_size)  # warm-up and scores
                their_scores = score_in_batches(theirs.score_batch, texts, batch_size)
                times = common.interleaved_best_times({
                    "ours": lambda: score_in_batches(ours.score_batch, texts, batch_size),
                    "theirs": lambda: score_in_batches(theirs.score_batch, texts, batch_size),
                }, repeats)
                our_time, their_time = times["ours"], times["theirs"]
                difference = max(abs(a - b) for a, b in zip(our_scores, their_scores))
                throughput.append([
                    dtype, head_name, str(batch_size), f"{tokens / our_time:.0f}", f"{tokens / their_time:.0f}",
                    f"{their_time / our_time:.2f}x", f"{difference:.1e}",
                ])
                print(" | ".join(throughput[-1]), flush=True)
            deepest = max(ours.plans[0].head.request.layers) + 1
            flops = common.backbone_flops(lengths, deepest, backbone.model.config)
            achieved = flops / our_time  # the last (largest) batch size measured above
            roofline.append([dtype, head_name, f"{achieved / 1e9:.0f}", f"{peak / 1e9:.0f}", f"{achieved / peak:.0%}"])
            print(" | ".join(roofline[-1]), flush=True)
            del ours, theirs
            gc.collect()
    return [
        common.Table(
            f"Throughput vs llm-siren SirenGuard ({text_count} texts, {tokens} real tokens, lengths 8-256 tokens)",
            ["dtype", "head", "batch", "ours tok/s", "llm-siren tok/s", "speed-up", "max abs score diff"],
            throughput,
        ),
        common.Table(
            f"Roofline at batch {batch_sizes[-1]} (useful backbone FLOPs of real tokens, blocks up to the deepest read layer)",
            ["dtype", "head", "achieved GFLOP/s", "matmul peak GFLOP/s", "share of peak"],
            roofline,
        ),
    ]


def main() -> None:
    def add_arguments(parser):
        parser.add_argument("--texts", type=int, default=16)
        parser.add_argument("--batch-sizes", default="1,8,32")
        parser.add_argument("--dtypes", default="float32,bfloat16")
        parser.add_argument("--repeats", type=int, default=2)

    def tables(workdir, args):
        sizes = tuple(int(size) for size in args.batch_sizes.split(","))
        return [t.markdown() for t in run(workdir, args.texts, tuple(args.dtypes.split(",")), args.repeats, sizes)]

    common.bench_main(__doc__, add_arguments, tables)


if __name__ == "__main__":
    main()
