"""Timeouts free the model for live requests, and slow or silent clients are cut off."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.sync.client import connect

from siren_ensemble.ensemble import ABANDONED
from siren_ensemble.errors import ConfigError
from siren_ensemble.serve.settings import ServeSettings

from .test_serve import make_ensemble, running, service  # noqa: F401  (make_ensemble: a fixture)


class SlowPasses:
    """Every forward pass of every backbone sleeps ``pass_s`` first; counts the texts each pass saw."""

    def __init__(self, ensemble, monkeypatch, pass_s: float):
        self.texts_seen = 0
        self.lock = threading.Lock()
        for shared in ensemble._passes:
            original = shared.backbone.pooled_states

            def slow(sequences, wanted, original=original):
                time.sleep(pass_s)
                with self.lock:
                    self.texts_seen += len(sequences)
                return original(sequences, wanted)

            monkeypatch.setattr(shared.backbone, "pooled_states", slow)


def test_score_batch_drops_the_texts_abandoned_before_their_pass(make_ensemble):
    ensemble = make_ensemble(batching={"max_texts": 1})
    texts = ["How do I bake bread?", "gone", "Write a poem.", "also gone"]
    results = ensemble.score_batch(texts, abandoned=lambda row: row % 2 == 1)
    for row in (0, 2):
        assert results[row].score == pytest.approx(ensemble.score(texts[row]).score, abs=1e-6)
        assert results[row].errors == {}
    for row in (1, 3):
        assert set(results[row].errors.values()) == {ABANDONED} and results[row].is_harmful


def test_an_abandoned_text_does_not_raise_for_the_others_under_the_raise_policy(make_ensemble):
    ensemble = make_ensemble(on_member_error="raise")
    results = ensemble.score_batch(["kept", "gone"], abandoned=lambda row: row == 1)
    assert results[0].errors == {} and results[0].score == pytest.approx(ensemble.score("kept").score, abs=1e-6)


def test_timed_out_requests_leave_the_model_to_live_ones(make_ensemble, monkeypatch):
    """Heavy requests that time out (queued or running) do not hold the model: a request sent after them is
    scored in time, and most of their forward passes never run."""
    ensemble = make_ensemble(batching={"max_texts": 1})
    slow = SlowPasses(ensemble, monkeypatch, pass_s=0.03)
    heavy = [f"heavy text number {index}" for index in range(16)]  # 16 texts x 2 backbones x 0.03 s ~ 1 s each
    with service(ensemble, request_timeout_s=0.5, batch_max_texts=16, batch_wait_ms=1, max_inputs=16) as url:
        def moderate(texts):
            return httpx.post(f"{url}/v1/moderations", json={"input": texts}, timeout=10).json()["results"]

        with ThreadPoolExecutor(3) as pool:
            timed_out = [item for answer in pool.map(moderate, [heavy] * 3) for item in answer]
        assert all(item["flagged"] and item["siren"]["errors"]["service"].startswith("timeout") for item in timed_out)
        started = time.monotonic()
        (live,) = moderate(["How do I bake bread?"])
        waited = time.monotonic() - started
        passes_for_heavy = slow.texts_seen
    assert live["siren"]["errors"] == {}, live  # not a timeout: nothing dead was queued in front of it
    assert live["siren"]["score"] == pytest.approx(ensemble.score("How do I bake bread?").score, abs=1e-5)
    assert waited < 0.5
    assert passes_for_heavy < 3 * 16 * 2 / 2  # well under all the heavy texts' passes


def test_a_stream_whose_chunk_times_out_is_answered_by_the_policy_and_closed(make_ensemble, monkeypatch):
    ensemble = make_ensemble()
    opened = []

    class SlowStream:
        def __init__(self, stream):
            self.stream = stream
            self.closed = False

        def feed_many(self, chunks):
            time.sleep(0.4)
            return self.stream.feed_many(chunks)

        def close(self):
            self.closed = True
            self.stream.close()

    real_stream = ensemble.stream
    monkeypatch.setattr(ensemble, "stream", lambda *args, **kwargs: opened.append(SlowStream(real_stream(*args, **kwargs))) or opened[-1])
    with service(ensemble, request_timeout_s=0.2) as url, connect(url.replace("http", "ws") + "/v1/stream") as ws:
        ws.send(json.dumps({"prompt": "Q"}))
        ws.send(json.dumps({"chunk": "A"}))
        answer = json.loads(ws.recv(timeout=10))
        closing = json.loads(ws.recv(timeout=10))
        with pytest.raises(Exception):
            ws.recv(timeout=10)
    assert answer["flagged"] is True and answer["errors"]["service"].startswith("timeout")
    assert "stream closed" in closing["error"]["message"]
    assert ws.close_code == 1013
    deadline = time.monotonic() + 5
    while not opened[0].closed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert opened[0].closed  # its caches freed once the feed that was running finished


# ---- the connection level -------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded(make_ensemble):  # noqa: F811
    settings = dict(header_timeout_s=0.5, body_timeout_s=0.5, max_connections=8)
    with service(make_ensemble(), **settings) as url:
        yield url


def _open(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    return sock


def _read_all(sock: socket.socket, timeout: float = 5) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    sock.settimeout(timeout)
    started, data = time.monotonic(), b""
    while True:
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def _drip(sock: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> None:
    for byte in data:
        if stop.is_set():
            return
        try:
            sock.send(bytes([byte]))
        except OSError:
            return
        time.sleep(every_s)


@pytest.mark.parametrize("client", ["silent", "header drip", "body drip"])
def test_slow_clients_are_cut_off(guarded, client):
    body = json.dumps({"input": "hello"}).encode()
    head = (f"POST /v1/moderations HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    sock = _open(guarded)
    stop = threading.Event()
    if client == "header drip":
        threading.Thread(target=_drip, args=(sock, head + body, 0.05, stop), daemon=True).start()
    elif client == "body drip":
        sock.sendall(head)
        threading.Thread(target=_drip, args=(sock, body, 0.2, stop), daemon=True).start()
    try:
        data, took = _read_all(sock)
    finally:
        stop.set()
        sock.close()
    assert took < 2, f"{client}: still open after {took:.1f} s"
    if client != "body drip":
        assert data.startswith(b"HTTP/1.1 408") and b"request headers not received within 0.5 s" in data
    assert httpx.post(f"{guarded}/v1/moderations", json={"input": "hello"}).status_code == 200


def test_a_kept_alive_connection_that_starts_a_request_must_finish_its_headers(guarded):
    sock = _open(guarded)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        sock.settimeout(5)
        first = b""
        while b'{"status":"ok"}' not in first:
            first += sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhos")  # then nothing more
        data, took = _read_all(sock)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 408") and took < 2


def test_connections_over_the_limit_get_503_at_once_and_the_service_recovers(guarded):
    held = [_open(guarded) for _ in range(8)]
    try:
        time.sleep(0.1)
        extra = _open(guarded)
        data, took = _read_all(extra, timeout=2)
        extra.close()
        assert data.startswith(b"HTTP/1.1 503") and b"too many open connections (limit 8)" in data and took < 1
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while (answer := httpx.get(f"{guarded}/healthz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert answer.status_code == 200


def test_oversized_headers_are_refused(guarded):
    answer = httpx.get(f"{guarded}/healthz", headers={"x-big": "a" * 20_000})
    assert answer.status_code in (400, 431)  # 400: h11 saw them arrive over its limit; 431: they came in one piece
    assert httpx.get(f"{guarded}/healthz", headers={"x-big": "a" * 10_000}).status_code == 200


@pytest.mark.parametrize("name", ["header_timeout_s", "body_timeout_s", "keep_alive_s"])
@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf")])
def test_connection_timeouts_must_be_positive_and_finite(name, value):
    with pytest.raises(ConfigError, match=name):
        ServeSettings(**{name: value})


def test_max_connections_must_be_positive():
    with pytest.raises(ConfigError, match="max_connections"):
        ServeSettings(max_connections=0)
