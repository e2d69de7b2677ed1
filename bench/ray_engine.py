"""Texts/s of `score --engine ray` against scoring in one process, on the same corpus, ensemble and CPUs.

Writes a corpus of ``--texts`` rows as JSONL (prompts, and prompt/response pairs, of one to four sentences
from the load test's sets; seeded), or reads ``--data``, then:

- local: loads the ensemble in this process (timed apart) and scores the corpus with ``score_batch`` in
  batches of ``--batch-size``, torch on ``--cpus`` threads;
- ray: for each ``--actors N``, the corpus job of ``score --engine ray`` (read, score, write Parquet, read
  back) on a Ray instance started here with ``--cpus`` CPUs (or the cluster at ``--address``), N actors of
  ``--cpus / N`` CPUs each, so that every run has the same CPUs; its time includes starting the actors and
  loading the models in each;
- every Ray score is checked against the local one (the largest difference is printed).

The overhead of a Ray run is its time minus the ideal: the local model load (each actor loads the models
at once, side by side) plus the local scoring time divided by N. It is what Ray costs on top of the work:
the actors' start, scheduling, moving rows to the actors and scores back, and writing and reading files.
The Ray instance's own start is timed apart and left out. On a cluster (``--address``), the local side
still runs here, so compare against it only when this machine is one of the cluster's nodes.

    .venv/bin/python bench/ray_engine.py                                        # the default ensemble, 2,000 texts
    .venv/bin/python bench/ray_engine.py --texts 10000 --actors 1 2 4 --output ray.md
    .venv/bin/python bench/ray_engine.py --config demo/ensemble.yaml --texts 64 --actors 1 2   # tiny models, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_service import PROMPTS, RESPONSES  # noqa: E402

MAX_TEXTS = 200_000


@dataclass(frozen=True)
class Timing:
    engine: str
    actors: int | None
    cpus_per_actor: float | None
    seconds: float
    texts: int
    #: Ray: seconds over the ideal (local load + local scoring / actors); None for the local run.
    overhead_s: float | None = None
    max_difference: float | None = None

    @property
    def texts_per_second(self) -> float:
        return self.texts / self.seconds


def write_corpus(path: Path, count: int, seed: int = 0) -> Path:
    generator = random.Random(seed)
    with path.open("w") as out:
        for index in range(count):
            prompt = " ".join(generator.choice(PROMPTS) for _ in range(generator.randint(1, 4)))
            row = {"id": index, "text": prompt} if index % 3 else {
                "id": index, "prompt": prompt, "response": " ".join(generator.choice(RESPONSES) for _ in range(generator.randint(1, 4)))}
            out.write(json.dumps(row) + "\n")
    return path


def score_locally(config: str, corpus: Path, batch_size: int, threads: int) -> tuple[float, float, dict]:
    """(model load seconds, scoring seconds, id -> score), in this process."""
    import torch

    from siren_ensemble import Ensemble
    from siren_ensemble.inputs import read_inputs

    torch.set_num_threads(threads)
    records = read_inputs(str(corpus))
    start = time.perf_counter()
    ensemble = Ensemble.from_config(config)
    loaded = time.perf_counter()
    scores = {}
    for first in range(0, len(records), batch_size):
        batch = records[first:first + batch_size]
        inputs = [ensemble.conversation_input(record.conversation) if record.conversation else record.text for record in batch]
        for record, result in zip(batch, ensemble.score_batch(inputs)):
            scores[record.id] = result.score
    return loaded - start, time.perf_counter() - loaded, scores


def score_on_ray(config: str, corpus: Path, output: Path, actors: int, cpus_per_actor: float, batch_size: int) -> tuple[float, dict]:
    """(seconds, id -> score) of the corpus job of ``score --engine ray``, read back from its Parquet files."""
    import pyarrow.parquet as pq

    from siren_ensemble.config import RayDataConfig, load_config
    from siren_ensemble.ray.corpus import CorpusJob, score_corpus

    options = RayDataConfig(concurrency=actors, batch_size=batch_size, num_cpus=cpus_per_actor)
    start = time.perf_counter()
    summary = score_corpus(load_config(config), CorpusJob(str(corpus), str(output), "parquet"), options)
    seconds = time.perf_counter() - start
    table = pq.read_table(output, columns=["id", "score"])
    assert summary.texts == table.num_rows
    return seconds, dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist()))


def run(config: str, texts: int, actor_counts: list[int], cpus: int, batch_size: int, address: str | None,
        data: Path | None, workdir: Path) -> tuple[list[Timing], float]:
    import ray

    corpus = data or write_corpus(workdir / "corpus.jsonl", texts)
    load_s, score_s, local = score_locally(config, corpus, batch_size, cpus)
    timings = [Timing("local", None, None, load_s + score_s, len(local))]
    print(f"local: load {load_s:.1f} s, scoring {score_s:.1f} s ({len(local) / score_s:.1f} texts/s)", flush=True)
    start = time.perf_counter()
    ray.init(address=address, num_cpus=None if address else cpus, logging_level="warning")
    ray_start_s = time.perf_counter() - start
    try:
        for actors in actor_counts:
            seconds, scored = score_on_ray(config, corpus, workdir / f"scores-{actors}", actors, cpus / actors, batch_size)
            difference = max(abs(scored[key] - score) for key, score in local.items())
            ideal = load_s + score_s / actors
            timings.append(Timing("ray", actors, cpus / actors, seconds, len(scored), seconds - ideal, difference))
            print(f"ray, {actors} actor(s): {seconds:.1f} s, overhead {seconds - ideal:.1f} s", flush=True)
    finally:
        ray.shutdown()
    return timings, ray_start_s


def table(timings: list[Timing], ray_start_s: float, cpus: int) -> str:
    local = timings[0]
    lines = [
        f"Ray instance start (not counted below): {ray_start_s:.1f} s; {cpus} CPUs in every run.",
        "",
        "| engine | actors | CPUs per actor | seconds (load included) | texts/s | vs local | overhead over ideal | max abs(score difference) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for timing in timings:
        overhead = "" if timing.overhead_s is None else f"{timing.overhead_s:.1f} s ({timing.overhead_s / timing.seconds:.0%})"
        difference = "" if timing.max_difference is None else f"{timing.max_difference:.1e}"
        lines.append(f"| {timing.engine} | {timing.actors or ''} | {timing.cpus_per_actor or ''} | {timing.seconds:.1f} | "
                     f"{timing.texts_per_second:.1f} | {local.seconds / timing.seconds:.2f}x | {overhead} | {difference} |")
    return "\n".join(lines)


def main() -> None:
    from siren_ensemble.default_ensemble import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="ensemble config (default: the packaged default ensemble)")
    parser.add_argument("--texts", type=int, default=2000, help=f"rows of the generated corpus (at most {MAX_TEXTS:,})")
    parser.add_argument("--data", type=Path, help="a JSONL corpus to score instead (as `score --input` reads it)")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="Ray runs, one per number of actors")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of every run (default: this machine's)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per score_batch call (and per actor call)")
    parser.add_argument("--address", help="a Ray cluster (ray://host:10001); default: a local instance")
    parser.add_argument("--output", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()
    if not 1 <= args.texts <= MAX_TEXTS:
        parser.error(f"--texts: between 1 and {MAX_TEXTS:,}")
    if min(args.actors) < 1 or args.cpus < 1:
        parser.error("--actors and --cpus: at least 1")
    with tempfile.TemporaryDirectory(prefix="ray-engine-") as workdir:
        timings, ray_start_s = run(args.config, args.texts, args.actors, args.cpus, args.batch_size, args.address,
                                   args.data, Path(workdir))
    report = table(timings, ray_start_s, args.cpus)
    print(report)
    if args.output:
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
