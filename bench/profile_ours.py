"""Where our time goes: torch profiler summaries of one score_batch and of one stream (all-layer head).

    .venv/bin/python bench/profile_ours.py [--dtype float32] [--texts 16]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import stream_cost  # noqa: E402


def run(workdir: Path, text_count: int = 16, dtype: str = "float32", rows: int = 12) -> list[str]:
    model = common.safetensors_copy(workdir)
    head = common.heads(workdir, model)["all 30 layers"]
    ours = common.ensemble_for(model, [head], dtype, batching={"max_tokens": 16384, "max_texts": 64})
    texts = common.mixed_texts(ours._passes[0].backbone.tokenizer, text_count)
    ours.score_batch(texts)  # warm-up
    batch = _profiled(lambda: ours.score_batch(texts), rows)
    chunks = stream_cost.chunks_of(ours._passes[0].backbone.tokenizer, 1024, 16)

    def stream():
        with ours.stream(stream_cost.PROMPT) as open_stream:
            for chunk in chunks:
                open_stream.feed(chunk)

    streamed = _profiled(stream, rows)
    return [
        f"### Profile of one score_batch ({text_count} texts, {dtype}, all-layer head)\n\n```\n{batch}```\n",
        f"### Profile of a stream (1,024 tokens in 16-token chunks, {dtype}, all-layer head)\n\n```\n{streamed}```\n",
    ]


def _profiled(work, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        work()
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def main() -> None:
    def add_arguments(parser):
        parser.add_argument("--texts", type=int, default=16)
        parser.add_argument("--dtype", default="float32")

    common.bench_main(__doc__, add_arguments, lambda workdir, args: run(workdir, args.texts, args.dtype))


if __name__ == "__main__":
    main()
