"""Dynamic micro-batching: concurrent requests gathered into one scoring call, run off the event loop.

The first request to arrive opens a batch; the batcher then waits up to ``max_wait_s`` for more,
stopping early when the batch holds ``max_texts`` texts or ``max_chars`` characters. The whole batch
goes to one ``score_batch`` call on the model thread (a single worker: the model is not shared
across threads), which itself splits it into forward passes capped by the config's
``batching.max_tokens``. While the model runs, new requests queue up and form the next batch.
A batch that raises is scored again request by request, so an error reaches only the request that caused it.

Work nobody waits for is dropped, never queued in front of live requests: a request abandoned while
queued (its caller timed out or went away) is skipped when the next batch is gathered, and one
abandoned while its batch runs has its remaining forward passes skipped (``score_batch`` is handed
``abandoned(row)``, asked before each pass). Only the pass already running when it was abandoned
finishes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future
    #: Set (on the event loop) once nobody waits for the answer; read by the model thread between passes.
    abandoned: threading.Event = field(default_factory=threading.Event)


#: ``score_batch(texts, abandoned=...)``: ``abandoned(row)`` is true once nobody waits for text ``row``.
ScoreBatch = Callable[..., Sequence[Any]]


class MicroBatcher:
    def __init__(self, score_batch: ScoreBatch, *, max_wait_s: float, max_texts: int,
                 max_chars: int, on_batch: Callable[[int], None] = lambda size: None,
                 thread_initializer: Callable[[], None] | None = None):
        self._score_batch = score_batch
        self._max_wait_s = max_wait_s
        self._max_texts = max_texts
        self._max_chars = max_chars
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._carried: _Pending | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siren-model", initializer=thread_initializer)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="siren-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def score(self, texts: list[str]) -> list[Any]:
        """One result per text, in order; raises whatever ``score_batch`` raised for the batch."""
        pending = _Pending(list(texts), asyncio.get_running_loop().create_future())
        # Cancelled with the caller (a timeout cancels the await below, and with it the future).
        pending.future.add_done_callback(lambda future: future.cancelled() and pending.abandoned.set())
        await self._queue.put(pending)
        return await pending.future

    async def run_on_model_thread(self, function: Callable[..., R], *args) -> R:
        """Run other model work (e.g. a streaming feed) on the same thread, in turn with the batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            if batch:
                await self._score(batch)

    async def _gather(self) -> list[_Pending]:
        first, self._carried = self._carried, None
        while first is None or first.future.done():  # requests abandoned while queued are dropped here
            first = await self._queue.get()
        batch, texts, chars = [first], len(first.texts), _chars(first)
        deadline = time.monotonic() + self._max_wait_s
        while texts < self._max_texts and chars < self._max_chars:
            try:
                pending = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if pending.future.done():
                continue  # abandoned while queued: it takes no room in the batch
            if texts + len(pending.texts) > self._max_texts or chars + _chars(pending) > self._max_chars:
                self._carried = pending  # it opens the next batch
                break
            batch.append(pending)
            texts += len(pending.texts)
            chars += _chars(pending)
        return [pending for pending in batch if not pending.future.done()]  # abandoned while the batch gathered

    async def _score(self, batch: list[_Pending]) -> None:
        self._on_batch(sum(len(pending.texts) for pending in batch))
        requests = [pending.texts for pending in batch]
        abandoned = [pending.abandoned for pending in batch]
        outcomes = await self.run_on_model_thread(score_requests, self._score_batch, requests, abandoned)
        for pending, outcome in zip(batch, outcomes):
            if pending.future.done():
                continue
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)


def score_requests(score_batch: ScoreBatch, requests: Sequence[Sequence[str]],
                   abandoned: Sequence[threading.Event]) -> list[list[Any] | Exception]:
    """Score the texts of gathered requests in one ``score_batch`` call; per request, its results or the error.

    A batch that raises is scored again request by request, so an error reaches only the request that caused
    it; a request abandoned meanwhile is not scored again (its outcome goes to nobody). Runs on the model thread.
    """
    texts = [text for request in requests for text in request]
    owners = [flag for request, flag in zip(requests, abandoned) for _ in request]
    try:
        results = score_batch(texts, abandoned=lambda row: owners[row].is_set())
    except Exception as error:
        if len(requests) == 1:
            return [error]
        return [score_requests(score_batch, [request], [flag])[0] if not flag.is_set() else error
                for request, flag in zip(requests, abandoned)]
    outcomes, start = [], 0
    for request in requests:
        outcomes.append(list(results[start:start + len(request)]))
        start += len(request)
    return outcomes


def _chars(pending: _Pending) -> int:
    return sum(len(text) if isinstance(text, str) else text.characters for text in pending.texts)  # or a Conversation
