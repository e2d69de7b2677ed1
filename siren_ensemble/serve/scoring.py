"""Scoring for the service: micro-batched, bounded in time, and failing the way the config says.

A scoring error or timeout never reaches the client as a 5xx: the text is answered by the failure
policy instead, ``flagged: true`` with the reason (fail closed), or ``flagged: false`` with the
reason when the config's ``on_member_error`` is ``fail_open``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Protocol

from ..ensemble import Ensemble, EnsembleResult
from ..input_kinds import Scorable, kind_of
from .batcher import MicroBatcher, ScoreBatch
from .metrics import ServiceMetrics
from .settings import ServeSettings

log = logging.getLogger("siren_ensemble.serve")

#: The key under ``errors`` that carries the reason when the failure policy answered.
SERVICE_ERROR_KEY = "service"


class Batcher(Protocol):
    """Gathers concurrent requests into ``score_batch`` calls on one model thread (``MicroBatcher``, or Ray
    Serve's ``@serve.batch`` in ``siren_ensemble.ray``)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def score(self, texts: list[str]) -> list[Any]: ...

    async def run_on_model_thread(self, function: Callable[..., Any], *args) -> Any: ...


#: Builds the batcher of a scorer: ``(score_batch, settings, on_batch, thread_initializer) -> Batcher``.
MakeBatcher = Callable[[ScoreBatch, ServeSettings, Callable[[int], None], Callable[[], None] | None], Batcher]


def micro_batcher(score_batch: ScoreBatch, settings: ServeSettings, on_batch: Callable[[int], None],
                  thread_initializer: Callable[[], None] | None) -> MicroBatcher:
    return MicroBatcher(score_batch, max_wait_s=settings.batch_wait_ms / 1000, max_texts=settings.batch_max_texts,
                        max_chars=settings.batch_max_chars, on_batch=on_batch, thread_initializer=thread_initializer)


class Scorer:
    def __init__(self, ensemble: Ensemble, settings: ServeSettings, metrics: ServiceMetrics,
                 make_batcher: MakeBatcher = micro_batcher):
        self.ensemble = ensemble
        self.settings = settings
        self.metrics = metrics
        self.fail_open = ensemble.config.on_member_error == "fail_open"
        self.batcher = make_batcher(self._score_batch, settings, metrics.batch_texts.observe,
                                    _torch_threads(settings.torch_threads))

    def start(self) -> None:
        self.batcher.start()

    def _score_batch(self, texts: list[Scorable], abandoned) -> list[EnsembleResult]:
        return self.ensemble.score_batch(texts, abandoned=abandoned)

    async def stop(self) -> None:
        await self.batcher.stop()

    async def score(self, texts: list[Scorable], threshold: float | None = None) -> list[EnsembleResult]:
        try:
            results = await asyncio.wait_for(self.batcher.score(texts), self.settings.request_timeout_s)
        except Exception as error:
            reason = _reason(error, self.settings)
            results = [self.policy_result(reason, self.ensemble.threshold_for(kind_of(text)) if threshold is None else threshold)
                       for text in texts]
        else:
            if threshold is not None:  # the batch was scored at each route's threshold; the request's own decides again
                results = [self.ensemble.decided_at(result, threshold) for result in results]
        self.metrics.record_verdicts(results)
        return results

    async def open_stream(self, prompt: str | None, threshold: float | None) -> "ScoredStream":
        """An incremental ``Ensemble.stream``, created (like every model call) on the model thread."""
        stream = await self.batcher.run_on_model_thread(lambda: self.ensemble.stream(prompt=prompt, threshold=threshold))
        return ScoredStream(self, stream, self.ensemble.threshold_for("response") if threshold is None else threshold)

    def policy_result(self, reason: str, threshold: float) -> EnsembleResult:
        """The answer when no score came: flagged (fail closed) or not (fail open), with the reason."""
        self.metrics.failures.labels(reason.split(":")[0]).inc()
        return EnsembleResult(
            score=0.0 if self.fail_open else 1.0, is_harmful=not self.fail_open, threshold=threshold,
            members={name: None for name in self.ensemble.member_names}, errors={SERVICE_ERROR_KEY: reason},
            categories=self.ensemble.unjudged_categories(),
        )


class ScoredStream:
    """A streaming session: each chunk is fed on the model thread, bounded by the request timeout.

    A feed that times out is answered by the failure policy and ends the stream (``timed_out``): the
    feed is dropped if it had not started, so the stream's state no longer matches the client's text,
    and a client that gave up on it would otherwise queue more work behind it.
    """

    def __init__(self, scorer: Scorer, stream, threshold: float):
        self._scorer = scorer
        self._stream = stream
        self._threshold = threshold
        self.timed_out = False

    async def feed(self, chunk: str) -> EnsembleResult:
        return (await self.feed_many([chunk]))[0]

    async def feed_many(self, chunks: list[str]) -> list[EnsembleResult]:
        """One result per chunk, scored together (chunks that arrived while the last ones were scored)."""
        scorer = self._scorer
        try:
            results = await asyncio.wait_for(scorer.batcher.run_on_model_thread(self._stream.feed_many, chunks),
                                             scorer.settings.request_timeout_s)
        except Exception as error:
            self.timed_out = isinstance(error, TimeoutError)
            reason = _reason(error, scorer.settings)
            results = [scorer.policy_result(reason, self._threshold) for _ in chunks]
        scorer.metrics.record_verdicts(results)
        return results

    async def close(self) -> None:
        await self._scorer.batcher.run_on_model_thread(self._stream.close)


def _torch_threads(count: int | None):
    if count is None:
        return None

    def set_threads() -> None:
        import torch

        torch.set_num_threads(count)

    return set_threads


def _reason(error: Exception, settings: ServeSettings) -> str:
    if isinstance(error, TimeoutError):
        return f"timeout: no score within {settings.request_timeout_s:g} s"
    log.error("scoring failed: %s: %s", type(error).__name__, error, exc_info=error)
    return f"scoring failed: {type(error).__name__}: {error}"
