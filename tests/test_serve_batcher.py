"""The micro-batcher on its own, with a fake scorer that records each batch."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from siren_ensemble.serve.batcher import MicroBatcher


class RecordingScorer:
    def __init__(self, fail_on: str | None = None, gate: threading.Event | None = None):
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on
        self.gate = gate

    def __call__(self, texts: list[str], abandoned=None) -> list[str]:
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(texts))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in texts:
            raise RuntimeError(f"cannot score {self.fail_on!r}")
        return [f"scored:{text}" for text in texts]


async def with_batcher(scorer, body, **options):
    options = {"max_wait_s": 0.05, "max_texts": 4, "max_chars": 1000, **options}
    batcher = MicroBatcher(scorer, **options)
    batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.stop()


def test_concurrent_requests_are_gathered_within_the_bounds_and_answered_in_order():
    scorer = RecordingScorer()
    requests = [[f"r{index}-a", f"r{index}-b"] if index % 3 == 0 else [f"r{index}"] for index in range(10)]
    sizes = []

    async def body(batcher):
        return await asyncio.gather(*(batcher.score(texts) for texts in requests))

    answers = asyncio.run(with_batcher(scorer, body, on_batch=sizes.append))
    assert answers == [[f"scored:{text}" for text in texts] for texts in requests]
    assert all(len(batch) <= 4 for batch in scorer.batches)
    assert len(scorer.batches) < len(requests)  # gathered, not one pass per request
    assert sorted(text for batch in scorer.batches for text in batch) == sorted(t for texts in requests for t in texts)
    assert sizes == [len(batch) for batch in scorer.batches]
    assert len(scorer.threads) == 1 and threading.current_thread().name not in scorer.threads


def test_character_bound_and_an_oversized_request_alone():
    scorer = RecordingScorer()

    async def body(batcher):
        return await asyncio.gather(batcher.score(["a" * 60]), batcher.score(["b" * 60]), batcher.score(["c"] * 9))

    answers = asyncio.run(with_batcher(scorer, body, max_chars=100, max_texts=4))
    assert [len(answer) for answer in answers] == [1, 1, 9]
    assert [len(batch) for batch in scorer.batches] == [1, 1, 9]


def test_max_texts_one_scores_each_request_in_its_own_pass():
    scorer = RecordingScorer()

    async def body(batcher):
        return await asyncio.gather(*(batcher.score([f"t{index}"]) for index in range(5)))

    asyncio.run(with_batcher(scorer, body, max_texts=1, max_wait_s=0))
    assert scorer.batches == [[f"t{index}"] for index in range(5)]


def test_a_failing_batch_raises_for_its_requests_only_and_the_batcher_goes_on():
    gate = threading.Event()
    scorer = RecordingScorer(fail_on="bad", gate=gate)

    async def body(batcher):
        first = asyncio.ensure_future(batcher.score(["bad"]))
        await asyncio.sleep(0.01)
        gate.set()
        with pytest.raises(RuntimeError, match="cannot score 'bad'"):
            await first
        return await batcher.score(["good"])

    assert asyncio.run(with_batcher(scorer, body, max_wait_s=0)) == ["scored:good"]


def test_a_request_abandoned_while_queued_is_not_scored():
    gate = threading.Event()
    scorer = RecordingScorer(gate=gate)

    async def body(batcher):
        busy = asyncio.ensure_future(batcher.score(["first"]))
        await asyncio.sleep(0.02)  # "first" is on the model thread, waiting for the gate
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.score(["abandoned"]), 0.02)
        gate.set()
        await busy
        return await batcher.score(["later"])

    assert asyncio.run(with_batcher(scorer, body, max_wait_s=0)) == ["scored:later"]
    assert scorer.batches == [["first"], ["later"]]


def test_a_batch_that_raises_is_scored_again_request_by_request():
    gate = threading.Event()
    scorer = RecordingScorer(fail_on="bad", gate=gate)

    async def body(batcher):
        requests = [asyncio.ensure_future(batcher.score(texts)) for texts in (["a", "b"], ["bad"], ["c"])]
        await asyncio.sleep(0.02)
        gate.set()
        return await asyncio.gather(*requests, return_exceptions=True)

    good, bad, other = asyncio.run(with_batcher(scorer, body, max_wait_s=0.01))
    assert good == ["scored:a", "scored:b"] and other == ["scored:c"]
    assert isinstance(bad, RuntimeError) and "cannot score 'bad'" in str(bad)
    assert scorer.batches[0] == ["a", "b", "bad", "c"]  # gathered together, then split after the error


def test_a_request_abandoned_while_queued_takes_no_room_in_the_next_batch():
    gate = threading.Event()
    scorer = RecordingScorer(gate=gate)

    async def body(batcher):
        busy = asyncio.ensure_future(batcher.score(["first"]))
        await asyncio.sleep(0.02)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.score(["dead-1", "dead-2", "dead-3"]), 0.02)
        later = [asyncio.ensure_future(batcher.score([f"live-{index}"])) for index in range(4)]
        await asyncio.sleep(0.01)
        gate.set()
        await busy
        return await asyncio.gather(*later)

    answers = asyncio.run(with_batcher(scorer, body, max_wait_s=0.005, max_texts=4))
    assert answers == [[f"scored:live-{index}"] for index in range(4)]
    assert scorer.batches == [["first"], [f"live-{index}" for index in range(4)]]  # one batch: the dead took no room


class PassByPassScorer:
    """Scores one text per "forward pass", asking ``abandoned`` before each, as Ensemble.score_batch does."""

    def __init__(self, pass_s: float):
        self.pass_s = pass_s
        self.scored: list[str] = []
        self.skipped: list[str] = []

    def __call__(self, texts, abandoned=None):
        results = []
        for row, text in enumerate(texts):
            if abandoned is not None and abandoned(row):
                self.skipped.append(text)
                results.append("abandoned")
                continue
            time.sleep(self.pass_s)
            self.scored.append(text)
            results.append(f"scored:{text}")
        return results


def test_a_request_abandoned_while_its_batch_runs_skips_its_remaining_passes():
    scorer = PassByPassScorer(pass_s=0.02)
    dead = [f"dead-{index}" for index in range(20)]

    async def body(batcher):
        doomed = asyncio.ensure_future(asyncio.wait_for(batcher.score(dead), 0.1))
        live = asyncio.ensure_future(batcher.score(["live"]))  # gathered into the same batch, after the dead texts
        with pytest.raises(TimeoutError):
            await doomed
        return await live

    assert asyncio.run(with_batcher(scorer, body, max_wait_s=0.01, max_texts=64)) == ["scored:live"]
    assert "live" in scorer.scored
    assert len(scorer.skipped) >= 10 and set(scorer.skipped) <= set(dead)  # not the 20 passes of 0.02 s
