"""The service on Ray Serve (a local instance on 2 CPUs, the tiny demo ensemble) answers as the one-process
server does: request by request the same status and body, the OpenAI client included, batched by @serve.batch."""

from __future__ import annotations

import json
import math
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install 'siren-ensemble[ray]')")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")

from siren_ensemble import Ensemble  # noqa: E402
from siren_ensemble.config import RayServeConfig  # noqa: E402
from siren_ensemble.ray import serve_app  # noqa: E402
from siren_ensemble.ray.serving import APP_NAME  # noqa: E402
from siren_ensemble.serve.app import create_app  # noqa: E402
from siren_ensemble.serve.settings import ServeSettings  # noqa: E402
from siren_ensemble.testing import write_demo_ensemble  # noqa: E402

from .ray_cluster import start_ray  # noqa: E402
from .test_serve import running, wait_ready  # noqa: E402

pytestmark = pytest.mark.ray

KEY = "ray-test-key"
SETTINGS = ServeSettings(api_key=KEY, max_inputs=4, max_chars=400, max_body_bytes=4000, batch_wait_ms=20)
AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = ["How do I bake bread?", "Explain how to pick a lock.", "x", "The quick brown fox " * 30]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_ensemble(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def ray_url(tmp_path_factory, demo):
    start_ray(tmp_path_factory.mktemp("ray"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(serve_app(demo, SETTINGS, RayServeConfig(replicas=1, num_cpus=0.5)), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout=120)
    yield url
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def local_url(demo):
    with running(create_app(Ensemble.from_config(demo), SETTINGS), SETTINGS) as url:
        wait_ready(url)
        yield url


def same(actual, expected, path="body"):
    """Equal, but floats within 1e-6 and a moderation's random `id` aside."""
    if isinstance(expected, float):
        assert isinstance(actual, (int, float)) and math.isclose(actual, expected, abs_tol=1e-6), f"{path}: {actual} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{path}: {actual} != {expected}"
        for key in expected:
            if not (key == "id" and path == "body"):
                same(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual} != {expected}"
        for index, (got, want) in enumerate(zip(actual, expected)):
            same(got, want, f"{path}[{index}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


REQUESTS = {
    "moderation": ("POST", "/v1/moderations", AUTH, {"json": {"input": TEXTS, "model": "guard"}}),
    "score, threshold": ("POST", "/v1/score", AUTH, {"json": {"text": "Explain how to pick a lock.", "threshold": 0.2}}),
    "score, pair": ("POST", "/v1/score", AUTH, {"json": {"prompt": "How do I bake bread?", "response": "Mix flour and water."}}),
    "score, chat": ("POST", "/v1/score", AUTH, {"json": {"messages": [{"role": "user", "content": "hi"},
                                                                      {"role": "assistant", "content": "hello"},
                                                                      {"role": "user", "content": "pick a lock?"}]}}),
    "lone surrogate: fail closed": ("POST", "/v1/score", AUTH,
                                    {"content": b'{"text": "bad \\ud800 text"}', "headers": {**AUTH, "content-type": "application/json"}}),
    "no key": ("POST", "/v1/moderations", {}, {"json": {"input": "a"}}),
    "wrong key": ("POST", "/v1/score", {"Authorization": "Bearer nope"}, {"json": {"text": "a"}}),
    "metrics without key": ("GET", "/metrics", {}, {}),
    "not JSON": ("POST", "/v1/moderations", AUTH, {"content": b"{oops", "headers": {**AUTH, "content-type": "application/json"}}),
    "wrong type": ("POST", "/v1/moderations", AUTH, {"json": {"input": ["a", 3]}}),
    "too many inputs": ("POST", "/v1/moderations", AUTH, {"json": {"input": ["a"] * 5}}),
    "too long": ("POST", "/v1/score", AUTH, {"json": {"text": "a" * 401}}),
    "body too large": ("POST", "/v1/moderations", AUTH, {"json": {"input": "a" * 5000}}),
    "both forms": ("POST", "/v1/score", AUTH, {"json": {"text": "a", "prompt": "b"}}),
    "unknown path": ("GET", "/v2/nothing", AUTH, {}),
    "healthz": ("GET", "/healthz", {}, {}),
    "readyz": ("GET", "/readyz", {}, {}),
}


@pytest.mark.parametrize("name", REQUESTS)
def test_each_request_is_answered_as_one_process_answers_it(ray_url, local_url, name):
    method, path, headers, options = REQUESTS[name]
    options = {"headers": headers, **options}
    answers = [httpx.request(method, f"{url}{path}", timeout=60, **options) for url in (ray_url, local_url)]
    assert answers[0].status_code == answers[1].status_code, (answers[0].text, answers[1].text)
    same(answers[0].json(), answers[1].json())


def test_the_openai_client_gets_the_scores_of_one_process(ray_url, local_url):
    answers = [openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0).moderations.create(input=TEXTS[:3], model="m")
               for url in (ray_url, local_url)]
    same(answers[0].model_dump(), answers[1].model_dump())
    with pytest.raises(openai.AuthenticationError, match="missing or wrong API key"):
        openai.OpenAI(base_url=f"{ray_url}/v1", api_key="wrong", max_retries=0).moderations.create(input="a")


def test_concurrent_requests_are_batched_by_serve_and_each_gets_its_own_score(ray_url, local_url):
    texts = [f"request number {index}: how do I bake bread?" for index in range(16)]

    def score(url, text):
        return httpx.post(f"{url}/v1/score", json={"text": text}, headers=AUTH, timeout=60).json()

    before = _batches(ray_url)
    with ThreadPoolExecutor(8) as pool:
        on_ray = list(pool.map(lambda text: score(ray_url, text), texts))
    batches, texts_in_batches = (after - earlier for after, earlier in zip(_batches(ray_url), before))
    assert texts_in_batches == len(texts) and batches < len(texts), "no two requests were scored in one batch"
    for got, text in zip(on_ray, texts):
        same(got, score(local_url, text))


def _batches(url: str) -> tuple[float, float]:
    """The replica's count of batches and of the texts in them (``siren_batch_texts``)."""
    lines = httpx.get(f"{url}/metrics", headers=AUTH).text.splitlines()
    return tuple(float(next(line for line in lines if line.startswith(f"siren_batch_texts_{part} ")).split()[1])
                 for part in ("count", "sum"))


def test_a_websocket_stream_is_answered_chunk_by_chunk_as_in_one_process(ray_url, local_url):
    from websockets.sync.client import connect

    def stream(url: str) -> list[dict]:
        with connect(url.replace("http://", "ws://") + "/v1/stream", open_timeout=30,
                     additional_headers=AUTH) as socket_:
            socket_.send(json.dumps({"prompt": "How do I bake bread?"}))
            answers = []
            for chunk in ("First, mix ", "flour and water, ", "then wait."):
                socket_.send(json.dumps({"chunk": chunk}))
                answers.append(json.loads(socket_.recv(timeout=30)))
            return answers

    same(stream(ray_url), stream(local_url))
