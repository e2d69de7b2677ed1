"""The uvicorn server for an app, with the limits that live at the connection level.

uvicorn by itself never times out a connection that has not finished sending a request: a client
that opens a connection and stays silent, or drips its headers or body a byte at a time, holds it
forever (slowloris). ``GuardedH11Protocol`` is uvicorn's h11 protocol with read deadlines and a
connection cap:

- a request's headers must arrive within ``header_timeout_s`` of the connection opening, or of its
  first byte on a kept-alive connection, else 408 and the connection is closed;
- its body within ``body_timeout_s`` of the headers, else the connection is closed (the app sees
  the client go away);
- an idle kept-alive connection is closed after ``keep_alive_s``;
- beyond ``max_connections`` open connections (HTTP and WebSocket), a new one is answered 503 and
  closed before anything is read from it;
- headers still arriving may hold at most ``max_header_bytes`` (h11's limit: 400 beyond); the app
  answers 431 to complete headers over it (``middleware.HeaderSizeLimit``).

A WebSocket connection leaves this protocol at its upgrade; the stream's own idle timeout applies then.
"""

from __future__ import annotations

import asyncio
import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .schemas import error_body
from .settings import ServeSettings


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body read deadlines and a cap on open connections."""

    settings: ServeSettings = ServeSettings()  # replaced per server by ``protocol_for``

    _read_deadline: asyncio.TimerHandle | None = None
    #: "headers" or "body": which part of the request the running deadline is for.
    _reading: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.settings.max_connections:
            message = f"too many open connections (limit {self.settings.max_connections}); retry later"
            _write_and_close(transport, 503, message, "service_unavailable")
            return
        self._expect("headers")  # also a silent new connection: uvicorn's keep-alive timer starts after a response

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused at connect, or timed out
        super().data_received(data)
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._reading is None:
                self._expect("headers")  # the first byte of a later request on a kept-alive connection
        elif state is h11.SEND_BODY:
            if self._reading != "body":
                self._expect("body")
        else:  # DONE: the request is in; the app's own timeout bounds the answer
            self._stop_deadline()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._stop_deadline()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def _expect(self, part: str) -> None:
        self._stop_deadline()
        seconds = self.settings.header_timeout_s if part == "headers" else self.settings.body_timeout_s
        self._reading = part
        self._read_deadline = self.loop.call_later(seconds, self._late, part, seconds)

    def _stop_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
        self._read_deadline = None
        self._reading = None

    def _late(self, part: str, seconds: float) -> None:
        self._read_deadline = None
        self._reading = None
        if self.transport.is_closing():
            return
        if part == "headers" and self.conn.our_state is h11.IDLE:
            _write_and_close(self.transport, 408, f"request headers not received within {seconds:g} s")
        else:  # the app is reading the body: closing the connection ends its request
            self.transport.close()


def protocol_for(settings: ServeSettings) -> type[GuardedH11Protocol]:
    """The protocol class for one server (uvicorn builds it with its own arguments, so settings ride on the class)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"settings": settings})


def build_server(app, settings: ServeSettings, log_level: str = "info", access_log: bool = True) -> uvicorn.Server:
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level, access_log=access_log,
        http=protocol_for(settings), ws="websockets-sansio", ws_max_size=settings.max_body_bytes,
        timeout_keep_alive=settings.keep_alive_s, h11_max_incomplete_event_size=settings.max_header_bytes,
        # uvicorn's own cap (503 once headers are in) backs up ours (503 at connect).
        limit_concurrency=settings.max_connections + 1, lifespan="on",
    )
    return uvicorn.Server(config)


def _write_and_close(transport: asyncio.Transport, status: int, message: str, error_type: str = "invalid_request_error") -> None:
    """A whole response written straight to the socket (no request was parsed to answer), then close."""
    body = json.dumps(error_body(message, error_type)).encode()
    reason = {408: "Request Timeout", 503: "Service Unavailable"}[status]
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode()
    transport.write(head + body)
    transport.close()
