"""Prometheus metrics, in a registry of the app's own (several apps can live in one process)."""

from __future__ import annotations

from typing import Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from ..ensemble import EnsembleResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("siren_requests", "HTTP requests and WebSocket sessions answered, by endpoint and status.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("siren_request_latency_seconds", "Time to answer a request, by endpoint.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_texts = Histogram("siren_batch_texts", "Texts per micro-batch sent to the model.",
                                     buckets=BATCH_BUCKETS, registry=self.registry)
        # The flagged rate is rate(siren_texts_flagged_total) / rate(siren_texts_scored_total).
        self.texts_scored = Counter("siren_texts_scored", "Texts answered (scored, or decided by the failure policy).",
                                    registry=self.registry)
        self.texts_flagged = Counter("siren_texts_flagged", "Texts answered as flagged.", registry=self.registry)
        # Only the cascade combiner decides by stage; the share per stage is what it saves.
        self.texts_decided = Counter("siren_texts_decided", "Texts decided, by cascade stage (index into combiner.stages).",
                                     ["stage"], registry=self.registry)
        self.failures = Counter("siren_scoring_failures", "Texts answered by the failure policy, by reason.",
                                ["reason"], registry=self.registry)

    def record_verdicts(self, results: Sequence[EnsembleResult]) -> None:
        self.texts_scored.inc(len(results))
        self.texts_flagged.inc(sum(result.is_harmful for result in results))
        for result in results:
            if result.decided_by is not None:
                self.texts_decided.labels(str(result.decided_by)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
