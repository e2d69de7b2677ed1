"""The streaming session behind the WebSocket endpoint.

``Ensemble.stream(prompt=None, threshold=None)`` returns an incremental stream with
``feed(chunk) -> EnsembleResult`` and ``close()``. Where the ensemble has no ``stream`` (an older
core), a fallback with the same contract re-scores the prompt and the whole response so far on
each chunk, which is what llm-siren's streaming does.
"""

from __future__ import annotations

from ..ensemble import Ensemble, EnsembleResult


def open_stream(ensemble: Ensemble, prompt: str | None, threshold: float | None):
    if hasattr(ensemble, "stream"):
        return ensemble.stream(prompt=prompt, threshold=threshold)
    return RescoringStream(ensemble, prompt, threshold)


class RescoringStream:
    def __init__(self, ensemble: Ensemble, prompt: str | None, threshold: float | None):
        self._ensemble = ensemble
        self._prompt = prompt
        self._threshold = threshold
        self._response = ""

    def feed(self, chunk: str) -> EnsembleResult:
        self._response += chunk
        return self._ensemble.score(prompt=self._prompt, response=self._response, threshold=self._threshold)

    def close(self) -> None:
        self._response = ""
