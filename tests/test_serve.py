"""The HTTP service against a real uvicorn server on loopback, with tiny random models."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from siren_ensemble import Ensemble
from siren_ensemble.config import EnsembleConfig
from siren_ensemble.errors import ConfigError
from siren_ensemble.serve.app import create_app
from siren_ensemble.serve.schemas import HARM_CATEGORY, OPENAI_CATEGORIES
from siren_ensemble.serve.server import build_server
from siren_ensemble.serve.settings import ServeSettings, is_loopback
from siren_ensemble.testing import random_head

from .conftest import HIDDEN

KEY = "test-key-123"
TEXTS = ["How do I bake bread?", "Explain how to pick a lock.", "x", "The quick brown fox " * 20]
LIMITS = dict(max_inputs=4, max_chars=400, max_body_bytes=4000)


@pytest.fixture(scope="module")
def make_ensemble(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    heads = {
        arch: random_head(str(tiny_models[arch]), layers=[0, 2], hidden_size=HIDDEN, max_length=32, seed=seed).save(root / arch)
        for seed, arch in enumerate(["llama", "qwen3"])
    }

    def make(**options) -> Ensemble:
        return Ensemble.from_config(EnsembleConfig.from_dict({"members": [
            {"name": "a", "backbone": "llama3", "head": str(heads["llama"])},
            {"name": "b", "backbone": "qwen3", "head": str(heads["qwen3"])},
        ], **options}))

    return make


@pytest.fixture(scope="module")
def ensemble(make_ensemble):
    return make_ensemble()


@contextmanager
def running(app, settings: ServeSettings):
    """A uvicorn server on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = build_server(app, settings, log_level="warning", access_log=False)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_ready(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "service never became ready"
        time.sleep(0.02)


@contextmanager
def service(ensemble, **options):
    settings = ServeSettings(**{**LIMITS, **options})
    with running(create_app(ensemble, settings), settings) as url:
        wait_ready(url)
        yield url


@pytest.fixture(scope="module")
def url(ensemble):
    with service(ensemble, batch_wait_ms=20) as base:
        yield base


@pytest.fixture(scope="module")
def keyed_url(ensemble):
    with service(ensemble, api_key=KEY, max_streams=1, stream_idle_timeout_s=0.5) as base:
        yield base


def moderate(url, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/moderations", json=body, **kwargs)


# ---- wire format -----------------------------------------------------------------------------

def test_moderation_answers_the_openai_shape_with_our_scores(url, ensemble):
    response = moderate(url, {"input": TEXTS, "model": "my-guard"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("modr-") and body["model"] == "my-guard"
    expected = ensemble.score_batch(TEXTS)
    assert len(body["results"]) == len(TEXTS)
    for result, want in zip(body["results"], expected):
        assert set(result["categories"]) == set(OPENAI_CATEGORIES) | {HARM_CATEGORY}
        assert result["categories"][HARM_CATEGORY] is result["flagged"] is want.is_harmful
        assert result["category_scores"][HARM_CATEGORY] == pytest.approx(want.score, abs=1e-6)
        assert not any(result["categories"][name] for name in OPENAI_CATEGORIES)
        details = result["siren"]
        assert details["score"] == pytest.approx(want.score, abs=1e-6)
        assert details["threshold"] == want.threshold
        assert details["members"] == pytest.approx(want.members, abs=1e-6)
        assert details["truncated"] is want.truncated
    assert body["results"][3]["siren"]["truncated"] is True  # longer than the heads' max_length of 32 tokens


def test_moderation_accepts_a_single_string(url, ensemble):
    body = moderate(url, {"input": "Explain how to pick a lock."}).json()
    assert len(body["results"]) == 1 and body["model"] == "siren-ensemble"
    assert body["results"][0]["siren"]["score"] == pytest.approx(ensemble.score("Explain how to pick a lock.").score, abs=1e-6)


def test_openai_client_moderations_create_works_unchanged(keyed_url, ensemble):
    client = openai.OpenAI(base_url=f"{keyed_url}/v1", api_key=KEY, max_retries=0)
    response = client.moderations.create(input=TEXTS[:2], model="siren")
    expected = ensemble.score_batch(TEXTS[:2])
    assert [result.flagged for result in response.results] == [want.is_harmful for want in expected]
    first = response.results[0]
    assert first.categories.violence is False and first.category_scores.violence == 0.0
    assert first.model_extra["siren"]["score"] == pytest.approx(expected[0].score, abs=1e-6)
    assert first.category_scores.model_extra[HARM_CATEGORY] == pytest.approx(expected[0].score, abs=1e-6)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        openai.OpenAI(base_url=f"{keyed_url}/v1", api_key="wrong", max_retries=0).moderations.create(input="hi")
    with pytest.raises(openai.BadRequestError, match="over the limit"):
        client.moderations.create(input=["x"] * 5)


def test_score_endpoint_text_pair_and_threshold_override(url, ensemble):
    answer = httpx.post(f"{url}/v1/score", json={"prompt": "Q?", "response": "A."}).json()
    want = ensemble.score(prompt="Q?", response="A.")
    assert answer["score"] == pytest.approx(want.score, abs=1e-6) and answer["members"] == pytest.approx(want.members, abs=1e-6)
    assert set(answer) == {"score", "is_harmful", "threshold", "members", "truncated"}
    low = httpx.post(f"{url}/v1/score", json={"text": "hello", "threshold": 0.0}).json()
    high = httpx.post(f"{url}/v1/score", json={"text": "hello", "threshold": 1.0}).json()
    assert (low["threshold"], low["is_harmful"]) == (0.0, True)
    assert (high["threshold"], high["is_harmful"]) == (1.0, high["score"] >= 1.0)
    assert low["score"] == pytest.approx(ensemble.score("hello").score, abs=1e-6)


# ---- auth --------------------------------------------------------------------------------

def test_api_key_is_required_on_the_api_and_metrics_but_not_on_health(keyed_url):
    assert moderate(keyed_url, {"input": "hi"}).status_code == 401
    assert moderate(keyed_url, {"input": "hi"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert moderate(keyed_url, {"input": "hi"}, headers={"Authorization": KEY}).status_code == 401  # no scheme
    assert moderate(keyed_url, {"input": "hi"}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{keyed_url}/metrics").status_code == 401
    assert httpx.get(f"{keyed_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{keyed_url}/healthz").status_code == 200
    assert httpx.get(f"{keyed_url}/readyz").status_code == 200


@pytest.mark.parametrize("header, authorized", [
    (f"Bearer {KEY}", True), (f"bearer {KEY}", True), (f"Bearer  {KEY}", False), (f"Bearer {KEY} ", False),
    (f"Bearer\t{KEY}", False), (KEY, False), ("Bearer ", False),
])
def test_the_bearer_header_must_be_exact(header, authorized):
    from starlette.datastructures import Headers

    from siren_ensemble.serve.auth import is_authorized

    assert is_authorized(Headers({"authorization": header}), KEY) is authorized


def test_non_loopback_host_needs_an_api_key():
    with pytest.raises(ConfigError, match="not a loopback address"):
        ServeSettings(host="0.0.0.0")
    assert ServeSettings(host="0.0.0.0", api_key="k").host == "0.0.0.0"
    assert [is_loopback(host) for host in ("127.0.0.1", "::1", "localhost", "127.3.2.1", "10.0.0.1", "example.com")] == [
        True, True, True, True, False, False]


def test_cli_refuses_a_public_bind_without_a_key(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from siren_ensemble.cli import cli

    monkeypatch.delenv("SIREN_ENSEMBLE_API_KEY", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--config", str(tmp_path / "none.yaml"), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "not a loopback address" in result.output


# ---- limits and malformed input --------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b'{"input": ', "request body is not valid JSON"),
    (b'[1, 2]', "request body: Input should be a valid dictionary"),
    (b'{"model": "m"}', "input: Field required"),
    (b'{"input": 5}', "input: expected a string or a list of strings, got int"),
    (b'{"input": ["ok", null]}', "input: item 1: expected a string, got NoneType"),
    (b'{"input": []}', "input: must not be empty"),
    (b'{"input": ["a", "b", "c", "d", "e"]}', "input: 5 texts, over the limit of 4"),
    (json.dumps({"input": ["ok", "y" * 401]}).encode(), "input[1]: 401 characters, over the limit of 400"),
])
def test_bad_moderation_requests_get_400_with_a_clear_message(url, content, message):
    response = httpx.post(f"{url}/v1/moderations", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


@pytest.mark.parametrize("body, message", [
    ({"text": "a", "prompt": "b"}, "pass one of `text`, `prompt`/`response` or `messages`"),
    ({}, "provide `text`"),
    ({"text": 3}, "text: Input should be a valid string"),
    ({"text": "a", "threshold": 2}, "threshold: Input should be less than or equal to 1"),
    ({"text": "a", "threshold": "0.5"}, "threshold: Input should be a valid number"),
    ({"text": "a", "threshold": True}, "threshold: Input should be a valid number"),
    ({"text": "a", "extra": 1}, "extra: Extra inputs are not permitted"),
    ({"prompt": "p" * 401}, "prompt: 401 characters, over the limit of 400"),
])
def test_bad_score_requests_get_400_with_a_clear_message(url, body, message):
    response = httpx.post(f"{url}/v1/score", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_non_json_content_type_and_oversized_bodies_are_refused(url):
    form = httpx.post(f"{url}/v1/moderations", data={"input": "hi"})
    assert form.status_code == 400 and "Content-Type: application/json" in form.json()["error"]["message"]
    big = moderate(url, {"input": "z" * 5000})
    assert big.status_code == 413 and "larger than the limit of 4000 bytes" in big.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for _ in range(10):
            yield b" " * 1000

    streamed = httpx.post(f"{url}/v1/moderations", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert httpx.get(f"{url}/nope").status_code == 404
    assert moderate(url, {"input": "still serving"}).status_code == 200


# ---- micro-batching, metrics, readiness --------------------------------------------------------

def test_concurrent_requests_share_batches_and_each_gets_its_own_scores(url, ensemble):
    texts = [f"request number {index}: " + "word " * index for index in range(12)]

    async def send_all():
        async with httpx.AsyncClient(base_url=url) as client:
            return await asyncio.gather(*(client.post("/v1/moderations", json={"input": text}) for text in texts))

    before = _metric(httpx.get(f"{url}/metrics").text, "siren_batch_texts_count")
    responses = asyncio.run(send_all())
    batches = _metric(httpx.get(f"{url}/metrics").text, "siren_batch_texts_count") - before
    expected = ensemble.score_batch(texts)
    assert [r.json()["results"][0]["siren"]["score"] for r in responses] == pytest.approx([w.score for w in expected], abs=1e-6)
    assert 1 <= batches < len(texts)


def test_metrics_count_requests_latency_batches_and_flags(url):
    moderate(url, {"input": ["one", "two"]})
    text = httpx.get(f"{url}/metrics").text
    assert _metric(text, 'siren_requests_total{endpoint="/v1/moderations",status="200"}') >= 1
    assert _metric(text, 'siren_request_latency_seconds_count{endpoint="/v1/moderations"}') >= 1
    assert _metric(text, "siren_texts_scored_total") >= 2
    assert 0 <= _metric(text, "siren_texts_flagged_total") <= _metric(text, "siren_texts_scored_total")
    assert _metric(text, "siren_batch_texts_sum") >= 2


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


def test_readyz_reports_each_members_dtype_and_why(url):
    body = httpx.get(f"{url}/readyz").json()
    assert body["status"] == "ready" and body["members"] == ["a", "b"]
    # The suite pins `dtype: auto` to float32 through the environment variable (conftest).
    assert body["dtypes"] == {name: {"requested": "auto", "dtype": "float32", "reason": "SIREN_ENSEMBLE_CPU_BF16=0"}
                              for name in ("a", "b")}


def test_readyz_waits_for_the_loader_and_reports_a_failed_load(ensemble):
    release = threading.Event()

    def slow_loader():
        release.wait(10)
        return ensemble

    settings = ServeSettings()
    with running(create_app(slow_loader, settings), settings) as base:
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").json()["status"] == "loading"
        refused = moderate(base, {"input": "hi"})
        assert refused.status_code == 503 and "loading" in refused.json()["error"]["message"]
        with connect(base.replace("http", "ws") + "/v1/stream") as socket_:
            assert "models are not loaded yet" in json.loads(socket_.recv(timeout=10))["error"]["message"]
            with pytest.raises(Exception):
                socket_.recv(timeout=10)
            assert socket_.close_code == 1013
        release.set()
        wait_ready(base)
        assert moderate(base, {"input": "hi"}).status_code == 200

    def broken_loader():
        raise ConfigError("members[0].head: not found")

    with running(create_app(broken_loader, settings), settings) as base:
        deadline = time.monotonic() + 10
        while (ready := httpx.get(f"{base}/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.status_code == 503 and "members[0].head: not found" in ready.json()["error"]


# ---- failing safe ------------------------------------------------------------------------

def test_an_unexpected_error_answers_500_without_internals_and_the_server_keeps_serving(ensemble, monkeypatch):
    import siren_ensemble.serve.app as app_module

    with service(ensemble) as base:
        monkeypatch.setattr(app_module, "moderation_result", lambda *args, **kwargs: 1 / 0)
        broken = moderate(base, {"input": "hi"})
        assert broken.status_code == 500
        assert broken.json()["error"]["message"] == "internal error; see the server log"
        assert broken.json()["error"]["type"] == "server_error" and "ZeroDivision" not in broken.text
        monkeypatch.undo()
        assert moderate(base, {"input": "hi"}).status_code == 200


def _break_backbone(ensemble: Ensemble, monkeypatch, member: str = "b") -> None:
    position = ensemble.member_names.index(member)
    shared = next(shared for shared in ensemble._passes if position in shared.member_positions)

    def broken(*args, **kwargs):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(shared.backbone, "pooled_states", broken)


def test_a_failing_member_flags_the_text_by_default(make_ensemble, monkeypatch):
    ensemble = make_ensemble(threshold=0.99)
    _break_backbone(ensemble, monkeypatch)
    with service(ensemble) as base:
        result = moderate(base, {"input": ["hello", "world"]}).json()["results"]
    for item in result:
        assert item["flagged"] is True and item["siren"]["score"] == 1.0
        assert "injected fault" in item["siren"]["errors"]["b"]
        assert item["siren"]["members"]["b"] is None and item["siren"]["members"]["a"] is not None


def test_a_scoring_exception_is_answered_flagged_with_the_reason(make_ensemble, monkeypatch):
    ensemble = make_ensemble(on_member_error="raise")
    _break_backbone(ensemble, monkeypatch)
    with service(ensemble) as base:
        answer = moderate(base, {"input": ["hello", "again"]})
        score = httpx.post(f"{base}/v1/score", json={"text": "hello", "threshold": 1.0}).json()
        metrics = httpx.get(f"{base}/metrics").text
    assert answer.status_code == 200
    for item in answer.json()["results"]:
        assert item["flagged"] is True and "MemberError" in item["siren"]["errors"]["service"]
    assert score["is_harmful"] is True and score["score"] == 1.0
    assert _metric(metrics, 'siren_scoring_failures_total{reason="scoring failed"}') == 3  # one per text


@pytest.mark.parametrize("policy, flagged", [("fail_closed", True), ("fail_open", False)])
def test_a_timeout_follows_the_failure_policy(make_ensemble, policy, flagged):
    ensemble = make_ensemble(on_member_error=policy)
    scored = ensemble.score_batch

    def slow(texts, *args, **kwargs):
        time.sleep(0.5)
        return scored(texts, *args, **kwargs)

    ensemble.score_batch = slow
    with service(ensemble, request_timeout_s=0.1) as base:
        item = moderate(base, {"input": "hello"}).json()["results"][0]
        time.sleep(0.5)  # the abandoned batch finishes; the server keeps serving
        assert httpx.get(f"{base}/healthz").status_code == 200
    assert item["flagged"] is flagged
    assert item["siren"]["errors"]["service"].startswith("timeout: no score within 0.1 s")


# ---- streaming -----------------------------------------------------------------------------

def test_websocket_stream_answers_a_score_per_chunk(url, ensemble):
    chunks = ["Sure, ", "here is ", "how to ", "do it."]
    ws_url = url.replace("http", "ws") + "/v1/stream"
    with connect(ws_url) as socket_:
        socket_.send(json.dumps({"prompt": "Tell me something", "threshold": 0.3}))
        answers = []
        for chunk in chunks:
            socket_.send(json.dumps({"chunk": chunk}))
            answers.append(json.loads(socket_.recv(timeout=10)))
    response = ""
    for index, (chunk, answer) in enumerate(zip(chunks, answers)):
        response += chunk
        want = ensemble.score(prompt="Tell me something", response=response, threshold=0.3)
        assert answer["index"] == index and answer["threshold"] == 0.3
        assert answer["score"] == pytest.approx(want.score, abs=1e-5)
        assert answer["flagged"] is answer["is_harmful"] is want.is_harmful


def test_websocket_chunks_sent_while_one_is_scored_are_scored_together(make_ensemble):
    ensemble = make_ensemble()
    open_stream, released, feeds = ensemble.stream, threading.Event(), []

    def stream(prompt=None, threshold=None):
        opened = open_stream(prompt=prompt, threshold=threshold)
        feed_many = opened.feed_many

        def held_first(chunks):
            feeds.append(len(chunks))
            if len(feeds) == 1:
                released.wait(10)  # the first feed is slow: the other chunks arrive meanwhile
            return feed_many(chunks)

        opened.feed_many = held_first
        return opened

    ensemble.stream = stream
    chunks = [" the", " sea", " and", " the", " wind"]
    with service(ensemble) as base, connect(base.replace("http", "ws") + "/v1/stream") as socket_:
        socket_.send(json.dumps({"prompt": "Q"}))
        socket_.send(json.dumps({"chunk": chunks[0]}))
        deadline = time.monotonic() + 10
        while not feeds:
            assert time.monotonic() < deadline, "the first chunk was never fed"
            time.sleep(0.01)
        for chunk in chunks[1:]:
            socket_.send(json.dumps({"chunk": chunk}))
        socket_.send("not json")
        time.sleep(0.3)
        released.set()
        answers = [json.loads(socket_.recv(timeout=10)) for _ in chunks]
        error = json.loads(socket_.recv(timeout=10))  # the bad message is refused after the chunks before it
        with pytest.raises(Exception):
            socket_.recv(timeout=10)
        assert socket_.close_code == 1008
    assert feeds == [1, len(chunks) - 1]
    assert "message is not valid JSON" in error["error"]["message"]
    assert [answer["index"] for answer in answers] == list(range(len(chunks)))
    for count, answer in enumerate(answers, 1):
        want = ensemble.score(prompt="Q", response="".join(chunks[:count]))
        assert answer["score"] == pytest.approx(want.score, abs=1e-5) and answer["flagged"] is want.is_harmful


def test_websocket_stream_rejects_bad_messages_and_bad_keys(url, keyed_url):
    ws_url = url.replace("http", "ws") + "/v1/stream"
    with connect(ws_url) as socket_:
        socket_.send(json.dumps({}))
        socket_.send("not json")
        error = json.loads(socket_.recv(timeout=10))
        assert "message is not valid JSON" in error["error"]["message"]
        with pytest.raises(Exception):
            socket_.recv(timeout=10)
        assert socket_.close_code == 1008
    with connect(ws_url) as socket_:
        socket_.send(json.dumps({}))
        socket_.send(json.dumps({"chunk": "y" * 401}))
        assert "response: 401 characters, over the limit of 400" in json.loads(socket_.recv(timeout=10))["error"]["message"]
    keyed_ws = keyed_url.replace("http", "ws") + "/v1/stream"  # keyed_url's server allows one stream at a time
    with pytest.raises(InvalidStatus):
        connect(keyed_ws).close()
    with connect(keyed_ws, additional_headers={"Authorization": f"Bearer {KEY}"}) as socket_:
        socket_.send(json.dumps({}))
        socket_.send(json.dumps({"chunk": "hello"}))
        assert json.loads(socket_.recv(timeout=10))["index"] == 0
        with connect(keyed_ws, additional_headers={"Authorization": f"Bearer {KEY}"}) as second:
            assert "too many open streams" in json.loads(second.recv(timeout=10))["error"]["message"]
            with pytest.raises(Exception):
                second.recv(timeout=10)
            assert second.close_code == 1013
        time.sleep(0.6)  # idle past the limit: the server closes the stream and frees its slot
        assert "no message for 0.5 s" in json.loads(socket_.recv(timeout=10))["error"]["message"]
    with connect(keyed_ws, additional_headers={"Authorization": f"Bearer {KEY}"}) as socket_:
        socket_.send(json.dumps({}))
        socket_.send(json.dumps({"chunk": "again"}))
        assert json.loads(socket_.recv(timeout=10))["index"] == 0


# ---- the command -----------------------------------------------------------------------------

def test_serve_command_runs_the_service(ensemble, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "ensemble.yaml"
    config.write_text(json.dumps({"members": [m.model_dump(exclude_defaults=True) for m in ensemble.config.members]}))
    process = subprocess.Popen([sys.executable, "-m", "siren_ensemble", "serve", "--config", str(config), "--port", str(port),
                                "--api-key", KEY, "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read().decode()
            assert time.monotonic() < deadline, "serve did not become ready"
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        answer = moderate(base, {"input": "hi"}, headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code == 200
        assert answer.json()["results"][0]["siren"]["score"] == pytest.approx(ensemble.score("hi").score, abs=1e-6)
    finally:
        process.terminate()
        process.wait(10)


def test_a_failing_stream_feed_is_answered_flagged_with_the_reason(make_ensemble):
    ensemble = make_ensemble()

    class BrokenStream:
        def feed_many(self, chunks):
            raise RuntimeError("injected stream fault")

        def close(self):
            pass

    ensemble.stream = lambda prompt=None, threshold=None: BrokenStream()
    with service(ensemble) as base, connect(base.replace("http", "ws") + "/v1/stream") as socket_:
        socket_.send(json.dumps({"prompt": "Q"}))
        socket_.send(json.dumps({"chunk": "A"}))
        answer = json.loads(socket_.recv(timeout=10))
    assert answer["flagged"] is True and answer["score"] == 1.0
    assert "injected stream fault" in answer["errors"]["service"]
