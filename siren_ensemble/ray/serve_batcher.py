"""The service's batcher on Ray Serve: ``@serve.batch`` gathers the requests, one model thread scores them.

It stands in for ``serve.batcher.MicroBatcher`` behind the same ``Scorer``: a gathered batch is scored by
``serve.batcher.score_requests`` (an error reaches only the request that caused it), and a request its caller
gave up on is dropped (``@serve.batch`` skips it while queued, ``score_batch`` between passes once running).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ray import serve

from ..serve.batcher import ScoreBatch, score_requests
from ..serve.settings import ServeSettings


@dataclass
class _Request:
    texts: list[str]
    abandoned: threading.Event = field(default_factory=threading.Event)


class ServeBatcher:
    def __init__(self, score_batch: ScoreBatch, *, max_wait_s: float, max_texts: int,
                 on_batch: Callable[[int], None] = lambda size: None,
                 thread_initializer: Callable[[], None] | None = None):
        self._score_batch = score_batch
        self._max_texts = max_texts
        self._on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="siren-model", initializer=thread_initializer)
        # Wrapped here, not as a decorated method: @serve.batch keeps its queue and bounds on the function it
        # wraps, and these bounds come from this service's settings.
        self._gathered = serve.batch(max_batch_size=max_texts, batch_wait_timeout_s=max_wait_s,
                                     batch_size_fn=_texts_in)(self._score_gathered)

    def start(self) -> None:
        """Nothing to start: @serve.batch starts its queue on the first request."""

    async def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def score(self, texts: list[str]) -> list[Any]:
        """One result per text, in order. A request larger than a batch goes in batch-sized pieces."""
        pieces = [texts[start:start + self._max_texts] for start in range(0, len(texts), self._max_texts)]
        answers = await asyncio.gather(*(self._score_piece(piece) for piece in pieces))
        return [result for answer in answers for result in answer]

    async def run_on_model_thread(self, function: Callable[..., Any], *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _score_piece(self, texts: list[str]) -> list[Any]:
        request = _Request(texts)
        try:
            outcome = await self._gathered(request)
        except asyncio.CancelledError:
            request.abandoned.set()
            raise
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _score_gathered(self, requests: list[_Request]) -> list[list[Any] | Exception]:
        self._on_batch(sum(len(request.texts) for request in requests))
        return await self.run_on_model_thread(score_requests, self._score_batch, [request.texts for request in requests],
                                              [request.abandoned for request in requests])


def _texts_in(requests: list[_Request]) -> int:
    return sum(len(request.texts) for request in requests)


def serve_batcher(score_batch: ScoreBatch, settings: ServeSettings, on_batch: Callable[[int], None],
                  thread_initializer: Callable[[], None] | None) -> ServeBatcher:
    """``create_app``'s ``make_batcher`` on Ray Serve: the settings' wait and batch size, counted in texts."""
    return ServeBatcher(score_batch, max_wait_s=settings.batch_wait_ms / 1000, max_texts=settings.batch_max_texts,
                        on_batch=on_batch, thread_initializer=thread_initializer)
