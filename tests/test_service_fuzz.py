"""The service fuzzed, in process, against the tiny ensemble.

- schemathesis generates requests from the app's OpenAPI schema (valid and invalid bodies, headers,
  methods) and checks every answer: no 5xx, the status code, content type and body documented, no
  traceback in the body;
- hypothesis sends JSON the schema does not describe (nested junk, lone surrogates, huge and
  non-finite numbers, wrong content types) to /v1/score and /v1/moderations.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import pytest
import hypothesis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from siren_ensemble import Ensemble
from siren_ensemble.config import EnsembleConfig
from siren_ensemble.serve.app import create_app
from siren_ensemble.serve.settings import ServeSettings
from siren_ensemble.testing import random_head

from .conftest import HIDDEN

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

LIMITS = ServeSettings(max_inputs=8, max_chars=2000, max_body_bytes=50_000, request_timeout_s=20)


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("service-fuzz")
    heads = {arch: random_head(str(tiny_models[arch]), layers=[0, 2], hidden_size=HIDDEN, max_length=32, seed=seed).save(root / arch)
             for seed, arch in enumerate(["llama", "qwen3"])}
    ensemble = Ensemble.from_config(EnsembleConfig.from_dict({"members": [
        {"name": "a", "backbone": "llama3", "head": str(heads["llama"])},
        {"name": "b", "backbone": "qwen3", "head": str(heads["qwen3"])},
    ]}))
    return create_app(ensemble, LIMITS)


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def no_traceback(ctx, response, case) -> None:
    text = response.text if isinstance(response.text, str) else ""
    assert "Traceback" not in text and 'File "' not in text, f"internals in the body: {text[:300]}"


def finite_scores(ctx, response, case) -> None:
    if response.status_code == 200 and case.path in ("/v1/score", "/v1/moderations"):
        body = json.loads(response.content)  # strict JSON: no NaN
        items = [body] if case.path == "/v1/score" else [item["siren"] for item in body["results"]]
        for item in items:
            assert math.isfinite(item["score"]) and 0 <= item["score"] <= 1


#: The schema cannot say every rule that turns a schema-valid body into a 400 (`text` or `prompt`/`response`,
#: the per-deployment limits on texts and characters), so "schema-valid requests are accepted" is not checked.
EXCLUDED = [positive_data_acceptance]
#: Examples per operation (healthz, readyz, metrics, moderations, score).
SCHEMA_EXAMPLES = 60


def test_the_openapi_schema_fuzzed(api_schema):
    # Driven by hand rather than through schemathesis' pytest plugin (``schema.parametrize``), which does
    # not run under pytest 9.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {operation.path for operation in operations} >= {"/v1/moderations", "/v1/score", "/readyz"}
    statuses: dict[str, Counter] = {}
    for operation, mode in itertools.product(operations, GenerationMode):  # bodies that fit the schema, and not
        @settings(max_examples=SCHEMA_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(mode))
        def fuzz(case):
            response = case.call()
            statuses.setdefault(f"{case.method} {case.path} {mode.value}", Counter())[response.status_code] += 1
            case.validate_response(response, additional_checks=[no_traceback, finite_scores], excluded_checks=EXCLUDED)

        try:
            fuzz()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # an operation without parameters has no invalid request
    print("schemathesis:", {operation: dict(counts) for operation, counts in statuses.items()})
    for path in ("/v1/moderations", "/v1/score"):  # scored texts and refused bodies
        assert {200, 400} <= set(statuses[f"POST {path} positive"]), statuses
        assert set(statuses[f"POST {path} negative"]) == {400}, statuses


# ---- JSON the schema does not describe ----------------------------------------------------------

TEXTS = st.one_of(st.text(max_size=30), st.sampled_from(["\ud800", "a\udfff", "<|im_start|>", "\x00", "x" * 2001]))
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=True, allow_infinity=True), TEXTS),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["input", "model", "text", "prompt", "response", "threshold", "x"]),
                                            inner, max_size=4)),
    max_leaves=10,
)
BODIES = st.one_of(
    st.fixed_dictionaries({}, optional={"input": JUNK, "model": JUNK, "text": JUNK, "prompt": JUNK, "response": JUNK,
                                        "threshold": JUNK}),
    st.fixed_dictionaries({"input": st.lists(TEXTS, min_size=1, max_size=9)}),
    st.fixed_dictionaries({"text": TEXTS}, optional={"threshold": st.one_of(st.floats(), st.text(max_size=4), st.booleans())}),
    JUNK,
)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as test_client:  # runs the lifespan: the scorer is started
        yield test_client


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/score", "/v1/moderations"]), body=BODIES,
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", None]))
def test_any_json_body_gets_an_answer_without_5xx_or_traceback(client, path, body, content_type):
    content = json.dumps(body)  # ensure_ascii: lone surrogates travel as "\ud800", NaN as the non-standard NaN
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(path, content=content, headers=headers)
    event(f"{path} {response.status_code}")
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    answer = json.loads(response.content)  # strict JSON back, whatever came in
    if response.status_code == 200:
        items = [answer] if path == "/v1/score" else [item["siren"] for item in answer["results"]]
        assert all(math.isfinite(item["score"]) for item in items)
    else:
        assert answer["error"]["message"]
