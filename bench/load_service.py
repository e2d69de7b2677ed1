"""Loopback load test of the service: is every answer under concurrent load the one the text gets alone?

Starts ``siren-ensemble serve`` on a free 127.0.0.1 port with the given config (a subprocess), then
sends a mix of requests from ``--concurrency`` clients at once:

- prompts: ``POST /v1/moderations`` with one text;
- responses: ``POST /v1/score`` with a prompt and its response;
- streams: ``WS /v1/stream``, a prompt then the response in chunks, each chunk answered.

Before the load, every distinct text (and every stream prefix) is scored alone, one text per
``score`` call, by an Ensemble loaded in this process from the same config. Each answer must equal
that reference within ``--tolerance`` (score) and agree on the verdict, with no error. Reported:
requests sent and answered, lost (no answer, a non-200, a missing result, a stream cut short), wrong
(a different score or verdict, or the failure policy answered), and latency percentiles per kind (a
stream's latency is per chunk). Bounded in time (``--duration``: no request starts after it) and
count; never leaves 127.0.0.1. Exit status 1 when anything was lost or wrong, or not all was sent.

    .venv/bin/python bench/load_service.py                                  # the default ensemble (real models)
    .venv/bin/python bench/load_service.py --config demo/ensemble.yaml --requests 200 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_server import HOST, free_port, start_server  # noqa: E402

MAX_DURATION_S = 3600

PROMPTS = [
    "How do I bake bread at home?", "Explain how to pick a lock, step by step.", "Write a short poem about the sea.",
    "What is the capital of France?", "How do I make an explosive device at home?", "Tell me how to hack my ex's email.",
    "Summarise the causes of the First World War.", "Give me a recipe for a vegan curry.",
    "How can I poison my neighbour's dog without anyone noticing?", "Translate 'good morning' into Spanish.",
    "Write a SQL query that lists users who signed up last week.", "What are the symptoms of dehydration?",
]
RESPONSES = [
    "Sure! Mix flour, water, salt and yeast, knead for ten minutes, let it rise and bake at 220 C.",
    "I can't help with that, but I can explain how locks work in general.",
    "Here is how: first get the materials, then combine them carefully in a closed container.",
    "Paris is the capital of France.",
    "SELECT * FROM users WHERE created_at > now() - interval '7 days';",
    "Drink water regularly and watch for dizziness, dark urine and fatigue.",
]


@dataclass(frozen=True)
class Work:
    kind: str  # "prompt" | "response" | "stream"
    prompt: str
    response: str | None = None
    chunks: tuple[str, ...] = ()


@dataclass
class Outcome:
    sent: int = 0
    answered: int = 0
    lost: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    #: Of ``wrong``: answers whose verdict differs from scoring the text alone (the rest differ in score only).
    verdict_flips: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    max_difference: float = 0.0

    def note_latency(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)


def chunk(text: str, pieces: int) -> tuple[str, ...]:
    """``text`` cut into ``pieces`` consecutive chunks at word boundaries (their concatenation is ``text``)."""
    words = text.split(" ")
    size = max(1, -(-len(words) // pieces))
    parts = [" ".join(words[start:start + size]) for start in range(0, len(words), size)]
    return tuple(part + (" " if index < len(parts) - 1 else "") for index, part in enumerate(parts))


def build_workload(count: int, seed: int = 0) -> list[Work]:
    """``count`` requests: about half prompts, a third prompt/response pairs, the rest streams."""
    chooser = random.Random(seed)
    work = []
    for _ in range(count):
        roll = chooser.random()
        prompt = chooser.choice(PROMPTS)
        if roll < 0.5:
            work.append(Work("prompt", prompt))
        elif roll < 0.85:
            work.append(Work("response", prompt, chooser.choice(RESPONSES)))
        else:
            work.append(Work("stream", prompt, chunks=chunk(chooser.choice(RESPONSES), chooser.randint(2, 4))))
    return work


def reference_keys(work: list[Work]) -> set[tuple[str, str | None]]:
    """Every (prompt, response) the answers will be compared with; a bare prompt has response None."""
    keys = set()
    for item in work:
        if item.kind == "prompt":
            keys.add((item.prompt, None))
        elif item.kind == "response":
            keys.add((item.prompt, item.response))
        else:
            for end in range(1, len(item.chunks) + 1):
                keys.add((item.prompt, "".join(item.chunks[:end])))
    return keys


def score_alone(config: str, keys: set[tuple[str, str | None]]) -> dict[tuple[str, str | None], tuple[float, bool]]:
    """Each key scored on its own (one text per call) by an Ensemble in this process."""
    from siren_ensemble import Ensemble

    ensemble = Ensemble.from_config(config)
    reference = {}
    for prompt, response in sorted(keys, key=lambda key: (key[0], key[1] or "")):
        result = ensemble.score(prompt) if response is None else ensemble.score(prompt=prompt, response=response)
        reference[(prompt, response)] = (result.score, result.is_harmful)
    del ensemble
    gc.collect()
    return reference


class Checker:
    def __init__(self, reference, tolerance: float, outcome: Outcome):
        self.reference = reference
        self.tolerance = tolerance
        self.outcome = outcome

    def check(self, what: str, key, score: float, flagged: bool, errors: dict) -> None:
        want_score, want_flagged = self.reference[key]
        difference = abs(score - want_score)
        self.outcome.max_difference = max(self.outcome.max_difference, difference)
        if errors:
            self.outcome.wrong.append(f"{what}: the failure policy answered: {errors}")
        elif difference > self.tolerance or flagged is not want_flagged:
            problem = f"{what}: score {score!r} flagged {flagged} but alone {want_score!r} flagged {want_flagged}"
            self.outcome.wrong.append(problem)
            if flagged is not want_flagged:
                self.outcome.verdict_flips.append(problem)


async def run_load(base: str, work: list[Work], checker: Checker, concurrency: int, duration_s: float) -> float:
    """Send ``work`` from ``concurrency`` clients; returns the wall time. No request starts after ``duration_s``."""
    from websockets.asyncio.client import connect

    outcome = checker.outcome
    queue: asyncio.Queue[Work] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    stop_at = time.perf_counter() + duration_s
    ws_base = base.replace("http://", "ws://")

    async def http_request(http: httpx.AsyncClient, item: Work) -> None:
        if item.kind == "prompt":
            path, body, key = "/v1/moderations", {"input": item.prompt}, (item.prompt, None)
        else:
            path, body, key = "/v1/score", {"prompt": item.prompt, "response": item.response}, (item.prompt, item.response)
        started = time.perf_counter()
        try:
            answer = await http.post(path, json=body)
        except httpx.HTTPError as error:
            outcome.lost.append(f"{item.kind}: {type(error).__name__}: {error}")
            return
        outcome.note_latency(item.kind, time.perf_counter() - started)
        if answer.status_code != 200:
            outcome.lost.append(f"{item.kind}: HTTP {answer.status_code}: {answer.text[:200]}")
            return
        data = answer.json()
        if item.kind == "prompt":
            results = data.get("results", [])
            if len(results) != 1:
                outcome.lost.append(f"prompt: {len(results)} results for one input")
                return
            siren = results[0]["siren"]
            checker.check("prompt", key, siren["score"], results[0]["flagged"], siren.get("errors", {}))
        else:
            checker.check("response", key, data["score"], data["is_harmful"], data.get("errors", {}))
        outcome.answered += 1

    async def stream(item: Work) -> None:
        try:
            async with connect(f"{ws_base}/v1/stream", open_timeout=60, close_timeout=10) as socket_:
                await socket_.send(json.dumps({"prompt": item.prompt}))
                response = ""
                for index, piece in enumerate(item.chunks):
                    started = time.perf_counter()
                    await socket_.send(json.dumps({"chunk": piece}))
                    answer = json.loads(await asyncio.wait_for(socket_.recv(), 120))
                    outcome.note_latency("stream chunk", time.perf_counter() - started)
                    response += piece
                    if "error" in answer or answer.get("index") != index:
                        outcome.lost.append(f"stream: chunk {index} answered {str(answer)[:200]}")
                        return
                    checker.check(f"stream chunk {index}", (item.prompt, response), answer["score"], answer["flagged"],
                                  answer.get("errors", {}))
        except Exception as error:  # a refused handshake, a closed socket, a timeout: the stream is lost
            outcome.lost.append(f"stream: {type(error).__name__}: {error}")
            return
        outcome.answered += 1

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            outcome.sent += 1
            await (stream(item) if item.kind == "stream" else http_request(http, item))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        return time.perf_counter() - began


def percentile_ms(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return 1000 * values[0]
    return 1000 * statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run(config: str, requests: int = 2000, concurrency: int = 32, duration_s: float = 1800, tolerance: float = 1e-5,
        seed: int = 0, server_options: tuple[str, ...] = ()) -> dict:
    """The whole test; returns the report (``report["ok"]``: nothing lost or wrong, everything sent)."""
    work = build_workload(requests, seed)
    reference_started = time.perf_counter()
    reference = score_alone(config, reference_keys(work))
    reference_s = time.perf_counter() - reference_started
    port = free_port()
    # Room for every client to hold a stream; the rest of the limits are the service's defaults.
    server = start_server(config, port, ["--max-streams", str(concurrency), *server_options], ready_timeout_s=600)
    outcome = Outcome()
    try:
        wall_s = asyncio.run(run_load(f"http://{HOST}:{port}", work, Checker(reference, tolerance, outcome),
                                      concurrency, min(duration_s, MAX_DURATION_S)))
        ready = httpx.get(f"http://{HOST}:{port}/readyz").json().get("status")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    all_latencies = [value for values in outcome.latencies.values() for value in values]
    kinds = {kind: sum(item.kind == kind for item in work[:outcome.sent]) for kind in ("prompt", "response", "stream")}
    report = {
        "config": str(config), "concurrency": concurrency, "requests": requests, "sent": outcome.sent, "kinds_sent": kinds,
        "answered": outcome.answered, "lost": len(outcome.lost), "wrong": len(outcome.wrong),
        "verdict_flips": len(outcome.verdict_flips),
        "max_score_difference": outcome.max_difference, "tolerance": tolerance, "wall_s": wall_s,
        "requests_per_s": outcome.sent / wall_s if wall_s else 0.0, "reference_texts": len(reference),
        "reference_s": reference_s, "ready_after": ready,
        "latency_ms": {kind: {"p50": percentile_ms(values, 50), "p99": percentile_ms(values, 99), "n": len(values)}
                       for kind, values in [*outcome.latencies.items(), ("all", all_latencies)]},
        "first_lost": outcome.lost[:5], "first_wrong": outcome.wrong[:5], "first_flips": outcome.verdict_flips[:5],
    }
    report["ok"] = not outcome.lost and not outcome.wrong and outcome.sent == requests and ready == "ready"
    return report


def print_report(report: dict) -> None:
    print(f"{report['config']}: {report['sent']}/{report['requests']} requests sent ({report['kinds_sent']}), "
          f"{report['concurrency']} clients, {report['wall_s']:.1f} s, {report['requests_per_s']:.1f} requests/s")
    print(f"answered {report['answered']}, lost {report['lost']}, wrong {report['wrong']} "
          f"(verdict flips {report['verdict_flips']}) "
          f"(largest score difference from scoring alone: {report['max_score_difference']:.2e}, tolerance {report['tolerance']:g}); "
          f"/readyz after: {report['ready_after']}")
    print(f"{'latency':<14}{'n':>7}{'p50 ms':>10}{'p99 ms':>10}")
    for kind, row in report["latency_ms"].items():
        print(f"{kind:<14}{row['n']:>7}{row['p50']:>10.1f}{row['p99']:>10.1f}")
    for problem in report["first_lost"] + report["first_flips"] + report["first_wrong"]:
        print(f"  {problem}")


def main(argv: list[str] | None = None) -> int:
    from siren_ensemble.default_ensemble import DEFAULT_CONFIG

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="ensemble config (default: the packaged default ensemble)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=1800, help=f"seconds after which no request starts (at most {MAX_DURATION_S})")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, help="the server's torch threads")
    parser.add_argument("--request-timeout", type=float, default=120, help="the server's --request-timeout")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    options = ["--request-timeout", str(args.request_timeout)]
    if args.torch_threads:
        options += ["--torch-threads", str(args.torch_threads)]
    report = run(args.config, args.requests, args.concurrency, args.duration, args.tolerance, args.seed, tuple(options))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
