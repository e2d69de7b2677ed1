"""Service edges from the reliability issue: binary WebSocket frames, health after a failed load, load errors and the key."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from websockets.sync.client import connect

from siren_ensemble.errors import ConfigError
from siren_ensemble.serve.app import create_app
from siren_ensemble.serve.settings import ServeSettings

from .test_serve import ensemble, make_ensemble, running, service, url  # noqa: F401  (fixtures)

KEY = "edge-key"


def test_a_binary_first_frame_is_refused_with_a_message(url):  # noqa: F811
    with connect(url.replace("http", "ws") + "/v1/stream") as socket_:
        socket_.send(b'{"prompt": "Q"}')
        answer = json.loads(socket_.recv(timeout=10))
        with pytest.raises(Exception):
            socket_.recv(timeout=10)
    assert "binary frames are not supported" in answer["error"]["message"] and socket_.close_code == 1008


def test_a_binary_frame_mid_stream_ends_it_after_answering_the_chunks_before(url, ensemble):  # noqa: F811
    with connect(url.replace("http", "ws") + "/v1/stream") as socket_:
        socket_.send(json.dumps({"prompt": "Q"}))
        socket_.send(json.dumps({"chunk": "A"}))
        first = json.loads(socket_.recv(timeout=10))
        socket_.send(b"\x00\xff")
        refusal = json.loads(socket_.recv(timeout=10))
        with pytest.raises(Exception):
            socket_.recv(timeout=10)
    assert first["score"] == pytest.approx(ensemble.score(prompt="Q", response="A").score, abs=1e-5)
    assert "binary frames are not supported" in refusal["error"]["message"] and socket_.close_code == 1008
    assert httpx.post(f"{url}/v1/moderations", json={"input": "still serving"}).status_code == 200


def _failed_service(api_key: str | None):
    def broken_loader():
        raise ConfigError("members[0].head: /secret/path/head not found")

    settings = ServeSettings(api_key=api_key)
    return running(create_app(broken_loader, settings), settings)


def _wait_failed(base: str, headers: dict | None = None) -> httpx.Response:
    deadline = time.monotonic() + 10
    while (ready := httpx.get(f"{base}/readyz", headers=headers)).json()["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return ready


def test_healthz_fails_once_the_models_failed_to_load():
    with _failed_service(None) as base:
        ready = _wait_failed(base)
        health = httpx.get(f"{base}/healthz")
    assert ready.status_code == 503 and "/secret/path/head not found" in ready.json()["error"]  # no key: loopback, shown
    assert health.status_code == 503 and health.json()["status"] == "failed"


def test_with_a_key_the_load_error_is_shown_only_to_clients_with_the_key():
    with _failed_service(KEY) as base:
        anonymous = _wait_failed(base)
        keyed = httpx.get(f"{base}/readyz", headers={"authorization": f"Bearer {KEY}"})
    assert anonymous.status_code == 503 and anonymous.json()["status"] == "failed"
    assert "/secret/path" not in anonymous.text and "see the server log" in anonymous.json()["error"]
    assert "/secret/path/head not found" in keyed.json()["error"]
