"""The service's settings: network, auth, request limits and micro-batching."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from ..errors import ConfigError

API_KEY_ENV = "SIREN_ENSEMBLE_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    #: Clients send ``Authorization: Bearer <key>``; ``None`` disables auth (loopback only).
    api_key: str | None = None
    max_body_bytes: int = 1_000_000
    max_inputs: int = 64
    max_chars: int = 32_000
    #: Concurrent WebSocket streams; each holds its backbones' KV caches until it closes.
    max_streams: int = 16
    #: Seconds a stream may wait for its next message before it is closed (frees its slot).
    stream_idle_timeout_s: float = 60.0
    #: Seconds a request may wait for its score before the fail policy answers instead.
    request_timeout_s: float = 30.0
    #: How long the micro-batcher waits for more requests after the first one arrives.
    batch_wait_ms: float = 5.0
    #: Texts per gathered batch; 1 turns micro-batching off (one request per forward pass).
    batch_max_texts: int = 64
    batch_max_chars: int = 200_000
    #: Seconds a client has to send a request's headers: from the connection opening, or from the first
    #: byte of a later request on a kept-alive connection (a silent or dripping client is cut off: 408).
    header_timeout_s: float = 10.0
    #: Seconds a client has to send a request's body once its headers are in; then the connection closes.
    body_timeout_s: float = 30.0
    #: Seconds an idle kept-alive connection stays open between requests.
    keep_alive_s: float = 5.0
    #: Open connections (HTTP and WebSocket together); one more is answered 503 and closed at once.
    max_connections: int = 256
    #: Bytes of request target and headers: 431 beyond (400 from h11 while they are still arriving).
    max_header_bytes: int = 16_384
    #: torch intra-op threads on the model thread; None keeps torch's default (one per core). On a
    #: machine shared with other busy processes, fewer threads avoid OpenMP oversubscription stalls.
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_inputs", "max_chars", "batch_max_texts", "batch_max_chars", "max_streams", "torch_threads",
                     "max_connections", "max_header_bytes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "stream_idle_timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be a positive number of seconds, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"batch_wait_ms: must not be negative, got {self.batch_wait_ms}")
        if self.api_key == "":
            raise ConfigError("api_key: must not be empty (leave it unset to disable auth on loopback)")
        if self.api_key is None and not is_loopback(self.host):
            raise ConfigError(
                f"host {self.host!r} is not a loopback address: set an API key (--api-key or {API_KEY_ENV}) "
                "before exposing the service"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere
