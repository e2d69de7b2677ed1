"""Streaming cost: a 1,024-token response fed in 16-token chunks, scored after every chunk.

Ours (``Ensemble.stream``: KV cache and running sums) vs re-encoding the whole prefix after every
chunk (what llm-siren's ``score_streaming`` does, and our own ``score_streaming``), each relative
to one full pass over the final text (the stream and the full pass alternate, best of two rounds).
Re-encoding is timed on every ``--sample``-th prefix and
scaled up by ``--sample`` to keep the run short (said so in the table).

    .venv/bin/python bench/stream_cost.py [--tokens 1024] [--chunk 16] [--sample 4]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

PROMPT = "Please write a long story about a lighthouse keeper and his dog."


def chunks_of(tokenizer, tokens: int, chunk: int) -> list[str]:
    [text] = common.mixed_texts(tokenizer, 1, shortest=tokens, longest=tokens, seed=7)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return [tokenizer.decode(ids[start:start + chunk]) for start in range(0, len(ids), chunk)]


def run(workdir: Path, tokens: int = 1024, chunk: int = 16, sample: int = 4, dtype: str = "float32",
        repeats: int = 2) -> list[common.Table]:
    model = common.safetensors_copy(workdir)
    head = common.heads(workdir, model)["all 30 layers"]
    ours = common.ensemble_for(model, [head], dtype)
    theirs = common.siren_guard_for(model, head, dtype)
    tokenizer = ours._passes[0].backbone.tokenizer
    chunks = chunks_of(tokenizer, tokens, chunk)
    prefixes = ["".join(chunks[:n]) for n in range(1, len(chunks) + 1)]
    sampled = list(range(sample - 1, len(prefixes), sample))

    ours.score(prompt=PROMPT, response=prefixes[0])  # warm-up
    streamed: list[float] = []

    def stream_all():
        streamed.clear()
        with ours.stream(PROMPT) as stream:
            for piece in chunks:
                streamed.append(stream.feed(piece).score)

    times = common.interleaved_best_times(
        {"full": lambda: ours.score(prompt=PROMPT, response=prefixes[-1]), "stream": stream_all}, repeats,
    )
    full_time, stream_time = times["full"], times["stream"]
    full = ours.score(prompt=PROMPT, response=prefixes[-1])

    def re_encode(score):
        begin = time.perf_counter()
        scores = [score(prefixes[n]) for n in sampled]
        return (time.perf_counter() - begin) * sample, scores

    our_re_time, our_re_scores = re_encode(lambda prefix: ours.score(prompt=PROMPT, response=prefix).score)
    their_re_time, their_re_scores = re_encode(lambda prefix: theirs.score(prompt=PROMPT, response=prefix).score)
    difference = max(abs(streamed[n] - score) for n, score in zip(sampled, our_re_scores))
    reference_difference = max(abs(streamed[n] - score) for n, score in zip(sampled, their_re_scores))
    assert abs(full.score - streamed[-1]) < 1e-4 or dtype != "float32"

    rows = [
        ["one full pass over the final text", f"{full_time:.2f}", "1.0x", ""],
        [f"ours: Ensemble.stream, {len(chunks)} feeds", f"{stream_time:.2f}", f"{stream_time / full_time:.1f}x",
         f"{difference:.1e}"],
        [f"ours re-encoding every prefix (score_streaming){' *' if sample > 1 else ''}", f"{our_re_time:.2f}",
         f"{our_re_time / full_time:.1f}x", ""],
        [f"llm-siren re-encoding every prefix (score_streaming){' *' if sample > 1 else ''}", f"{their_re_time:.2f}",
         f"{their_re_time / full_time:.1f}x", f"{reference_difference:.1e}"],
    ]
    for row in rows:
        print(" | ".join(row), flush=True)
    note = f" (* timed on every {sample}th prefix, x{sample})" if sample > 1 else ""
    return [common.Table(
        f"Streaming a {tokens}-token response in {chunk}-token chunks, {dtype}, all-layer head{note}",
        ["method", "seconds", "vs one full pass", "max abs diff vs stream"], rows,
    )]


def main() -> None:
    def add_arguments(parser):
        parser.add_argument("--tokens", type=int, default=1024)
        parser.add_argument("--chunk", type=int, default=16)
        parser.add_argument("--sample", type=int, default=4)
        parser.add_argument("--dtype", default="float32")
    common.bench_main(__doc__, add_arguments, lambda workdir, args: [t.markdown() for t in run(workdir, args.tokens, args.chunk, args.sample, args.dtype)])


if __name__ == "__main__":
    main()
