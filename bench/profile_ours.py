"""Where our time goes: a torch profiler summary of one score_batch (all-layer head, batch 32).

    .venv/bin/python bench/profile_ours.py [--dtype bfloat16] [--texts 24]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def run(workdir: Path, text_count: int = 24, dtype: str = "bfloat16", rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    model = common.safetensors_copy(workdir)
    head = common.heads(workdir, model)["all 30 layers"]
    ours = common.ensemble_for(model, [head], dtype, batching={"max_tokens": 16384, "max_texts": 64})
    texts = common.mixed_texts(ours._passes[0].backbone.tokenizer, text_count)
    ours.score_batch(texts)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        ours.score_batch(texts)
    summary = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)
    return f"### Profile of one score_batch ({text_count} texts, {dtype}, all-layer head)\n\n```\n{summary}```\n"


def main() -> None:
    def add_arguments(parser):
        parser.add_argument("--texts", type=int, default=24)
        parser.add_argument("--dtype", default="bfloat16")

    common.bench_main(__doc__, add_arguments, lambda workdir, args: [run(workdir, args.texts, args.dtype)])


if __name__ == "__main__":
    main()
