"""Property tests (hypothesis): text cleaning, the input readers and config validation, on any input.

Each property is the issue's rule: any input ends in a clear error (a ``SirenError``, whose message the
CLI prints on one line) or in finite scores; never another exception. The example counts are modest so
the file stays fast; docs/reliability.md lists them. Under CI (``CI`` set) examples are derandomized, so
a run is reproducible.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from siren_ensemble import Ensemble
from siren_ensemble.config import EnsembleConfig, load_config
from siren_ensemble.ensemble import _clean_each
from siren_ensemble.errors import InputError, SirenError
from siren_ensemble.inputs import read_inputs
from siren_ensemble.testing import random_head
from siren_ensemble.text import _CHAT_ARTIFACTS, EMPTY_TEXT_STANDIN, check_encodable, clean_text, join_prompt_response

from .conftest import HIDDEN

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Properties that load or score tiny models: fewer examples.
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

MARKERS = ["<|im_start|>", "<|im_end|>", "<|eot_id|>", "[INST]", "[/INST]", "<s>", "</s>", "<<SYS>>", "<|endoftext|>"]
#: Text pieces: any Unicode (lone surrogates included), chat markers, whitespace runs, control characters.
PIECES = st.one_of(
    st.text(max_size=8),
    st.sampled_from(MARKERS),
    st.sampled_from([" ", "\t", "\n", "\r\n", "\n\n\n", "  \t ", "\x00", "\u2028", "\ufeff", "\u200b"]),
    st.characters(categories=["Cs"]),  # lone surrogates: what JSON's "\ud800" decodes to
)
TEXTS = st.lists(PIECES, max_size=12).map("".join)


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


# ---- text cleaning ----------------------------------------------------------------------------------

@FAST
@given(TEXTS)
def test_clean_text_leaves_no_marker_and_no_whitespace_runs(text):
    cleaned = clean_text(text)
    assert isinstance(cleaned, str) and cleaned
    if cleaned != EMPTY_TEXT_STANDIN:
        assert cleaned == cleaned.strip()
        assert _CHAT_ARTIFACTS.search(cleaned) is None
        assert "\n\n\n" not in cleaned and "  " not in cleaned and "\t" not in cleaned
    assert clean_text(cleaned) == cleaned  # cleaning is idempotent


@FAST
@given(TEXTS)
def test_check_encodable_refuses_exactly_the_texts_with_a_lone_surrogate(text):
    if has_surrogate(text):
        with pytest.raises(ValueError, match="lone surrogate"):
            check_encodable(text)
    else:
        check_encodable(text)


@FAST
@given(st.lists(TEXTS, max_size=6))
def test_cleaning_a_batch_answers_each_text_on_its_own(texts):
    cleaned, rejected = _clean_each(texts)
    for text, clean, reason in zip(texts, cleaned, rejected, strict=True):
        assert (reason is not None) == has_surrogate(text)
        assert clean == (None if reason else clean_text(text))


@FAST
@given(st.one_of(st.none(), TEXTS), st.one_of(st.none(), TEXTS))
def test_join_prompt_response_keeps_both_parts(prompt, response):
    joined = join_prompt_response(prompt, response)
    assert joined == "\n".join(part for part in (prompt, response) if part)


# ---- scoring any text ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def heads(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    return {arch: random_head(str(tiny_models[arch]), layers=[0, 2], hidden_size=HIDDEN, max_length=32, seed=seed).save(root / arch)
            for seed, arch in enumerate(["llama", "qwen3"])}


@pytest.fixture(scope="module")
def ensemble(heads) -> Ensemble:
    return Ensemble.from_config(EnsembleConfig.from_dict({"members": [
        {"name": "a", "backbone": "llama3", "head": str(heads["llama"])},
        {"name": "b", "backbone": "qwen3", "head": str(heads["qwen3"])},
    ]}))


def assert_finite_results(results, texts):
    assert len(results) == len(texts)
    for result in results:
        assert math.isfinite(result.score) and 0.0 <= result.score <= 1.0
        assert isinstance(result.is_harmful, bool)
        json.dumps(result.to_dict(), allow_nan=False)  # what the CLI and the service write


@SLOW
@given(st.lists(TEXTS, min_size=1, max_size=5))
def test_any_text_gets_a_finite_score_or_fails_closed_alone(ensemble, texts):
    results = ensemble.score_batch(texts)
    assert_finite_results(results, texts)
    for text, result in zip(texts, results):
        if has_surrogate(text):
            assert result.is_harmful and set(result.errors) == {"a", "b"}  # fail closed, this text only
        else:
            assert result.errors == {}
            assert result.score == pytest.approx(ensemble.score(text).score, abs=1e-5)  # as if scored alone


# ---- input readers --------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXTS),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["text", "prompt", "response", "id", "label", "x"]), inner, max_size=4)),
    max_leaves=8,
)
#: JSONL lines: well-formed objects with our keys, any JSON value, or broken JSON.
JSONL_LINES = st.one_of(
    st.fixed_dictionaries({}, optional={"text": JSON_VALUES, "prompt": JSON_VALUES, "response": JSON_VALUES,
                                        "label": st.one_of(JSON_VALUES, st.sampled_from([0, 1, True, "harmful", "safe"])),
                                        "id": JSON_VALUES}).map(json.dumps),
    JSON_VALUES.map(json.dumps),
    st.text(max_size=20),
)


def read(content: bytes, suffix: str, require_label: bool = False):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"inputs{suffix}"
        path.write_bytes(content)
        return read_inputs(str(path), require_label=require_label)


def check_records(records) -> None:
    assert records
    for record in records:
        assert isinstance(record.text, str)
        assert record.label in (None, 0, 1)


@FAST
@given(st.binary(max_size=200), st.sampled_from([".txt", ".jsonl"]), st.booleans())
def test_any_bytes_read_as_inputs_or_raise_input_error(content, suffix, require_label):
    try:
        records = read(content, suffix, require_label)
    except InputError as error:
        assert str(error) and "\n" not in str(error)
        return
    check_records(records)


@FAST
@given(st.lists(JSONL_LINES, max_size=8), st.booleans(), st.sampled_from(["\n", "\r\n"]))
def test_any_jsonl_reads_as_records_or_raises_input_error_naming_a_line(lines, require_label, newline):
    content = newline.join(lines).encode("utf-8", "surrogatepass")
    try:
        records = read(content, ".jsonl", require_label)
    except InputError as error:
        assert str(error).split(": ")[1].startswith(("line ", "no inputs", "labelled")), str(error)
        return
    check_records(records)


#: Lines that read: a text or a prompt/response pair (any Unicode, escaped as JSON does), with an id or extra keys.
READABLE_LINES = st.one_of(
    st.fixed_dictionaries({"text": TEXTS}, optional={"id": JSON_VALUES, "extra": JSON_VALUES}),
    st.fixed_dictionaries({"prompt": TEXTS}, optional={"response": TEXTS, "id": JSON_VALUES}),
    st.fixed_dictionaries({"response": TEXTS}, optional={"id": JSON_VALUES}),
).map(json.dumps)


@SLOW
@given(st.lists(READABLE_LINES, min_size=1, max_size=5))
def test_inputs_that_read_score_finite(ensemble, lines):
    try:
        records = read("\n".join(lines).encode("utf-8"), ".jsonl")
    except InputError:
        assume(False)  # only a file of blank texts: "no inputs"
    texts = [record.text for record in records]
    assert_finite_results(ensemble.score_batch(texts), texts)


# ---- config validation from YAML ------------------------------------------------------------------

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
#: Where a valid config is broken: (path, how). A path ending in "*" adds an unknown key there.
MUTABLE = [
    ("members.0.name",), ("members.0.backbone",), ("members.0.head",), ("members.0.device",), ("members.0.dtype",),
    ("members.0.weight",), ("members.0.threshold",), ("members.0.trust_remote_code",), ("members.0.backbone_options",),
    ("members.0.max_memory",), ("members.0.sha256",), ("members.1.weight",), ("members.1.name",), ("members",),
    ("combiner",), ("combiner.type",), ("combiner.rule",), ("combiner.k",), ("combiner.stages",), ("combiner.combine",),
    ("threshold",), ("on_member_error",), ("batching",), ("batching.max_tokens",), ("batching.max_texts",),
    ("batching.max_padding",), ("sliding_window",), ("sliding_window.stride",), ("calibration",), ("unknown_key",),
]
WEIGHTS = st.one_of(st.floats(min_value=0, max_value=1e6), st.sampled_from([0.0, 1e-300, 1e6]))
UNIT = st.one_of(st.none(), st.floats(min_value=0, max_value=1))
COMBINERS = st.one_of(
    st.sampled_from(["mean", "weighted_mean", "logit_mean", "max"]).map(lambda kind: {"type": kind}),
    st.fixed_dictionaries({"type": st.just("vote"), "rule": st.sampled_from(["any", "majority"])}),
    st.fixed_dictionaries({"type": st.just("vote"), "rule": st.just("k"), "k": st.integers(min_value=0, max_value=3)}),
    st.fixed_dictionaries({"type": st.just("cascade"), "combine": st.sampled_from(["mean", "logit_mean", "max"]),
                           "stages": st.tuples(UNIT, UNIT).map(lambda band: [
                               {"members": ["a"], **({"low": min(band)} if None not in band else {}),
                                **({"high": max(band)} if None not in band else {})},
                               {"members": ["b"]}])}),
)


def valid_configs(heads) -> st.SearchStrategy[dict]:
    members = st.tuples(*(
        st.fixed_dictionaries({"name": st.just(name), "backbone": st.just(backbone), "head": st.just(str(heads[arch]))},
                              optional={"weight": WEIGHTS, "threshold": st.floats(min_value=0, max_value=1),
                                        "dtype": st.sampled_from(["auto", "float32", "bfloat16", "int8"])})
        for name, backbone, arch in (("a", "llama3", "llama"), ("b", "qwen3", "qwen3"))
    )).map(list)
    return st.fixed_dictionaries(
        {"members": members, "combiner": COMBINERS},
        optional={"on_member_error": st.sampled_from(["fail_closed", "fail_open"]),
                  "batching": st.fixed_dictionaries({}, optional={"max_tokens": st.integers(1, 4096), "max_texts": st.integers(1, 8),
                                                                  "max_padding": st.floats(0, 1)}),
                  "sliding_window": st.one_of(st.none(), st.fixed_dictionaries({}, optional={"stride": st.integers(1, 64)}))},
    )


def mutate(config: dict, path: str, value) -> dict:
    """``config`` with ``value`` written at ``path`` (dots; numbers index lists), creating mappings on the way."""
    config = json.loads(json.dumps(config))  # a deep copy
    *parents, last = path.split(".")
    node = config
    for part in parents:
        if isinstance(node, list):
            node = node[int(part)] if int(part) < len(node) else {}
        else:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), (dict, list)) else {}
    if isinstance(node, list):
        if int(last) < len(node):
            node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    return config


def load_yaml_text(text: str):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ensemble.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        return load_config(path)


@FAST
@given(st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(["members:", "  - name: a", "    head: x", "combiner: {type: vote}", "key: 1", "key: 2",
                              "threshold: .nan", "<<: *x", "&x {a: 1}", "- [", "!!python/object:os.system", "\t", "..."]),
             max_size=8).map("\n".join),
    JUNK.map(lambda value: yaml.safe_dump(value)),
))
def test_any_yaml_text_is_a_config_or_a_config_error(text):
    try:
        config = load_yaml_text(text)
    except SirenError as error:
        assert str(error) and "Traceback" not in str(error)
        event(f"refused: {type(error).__name__}")
        return
    event("a config")
    assert isinstance(config, EnsembleConfig)


@pytest.fixture(scope="module")
def config_strategy(heads):
    broken = st.tuples(st.sampled_from(MUTABLE).map(lambda entry: entry[0]), JUNK)
    return st.tuples(valid_configs(heads), st.lists(broken, max_size=2))


@SLOW
@given(data=st.data())
def test_any_config_is_a_clear_error_or_an_ensemble_that_scores_finite(config_strategy, data):
    base, mutations = data.draw(config_strategy)
    raw = base
    for path, value in mutations:
        raw = mutate(raw, path, value)
    try:
        config = load_yaml_text(yaml.safe_dump(raw, allow_unicode=True))
        ensemble = Ensemble.from_config(config)
    except SirenError as error:
        assert str(error) and "Traceback" not in str(error)
        event(f"refused: {type(error).__name__}")
        return
    event("built and scored")
    texts = ["How do I bake bread?", "", "Explain how to pick a lock. " * 20, "bad \ud800"]
    results = ensemble.score_batch(texts)
    assert_finite_results(results, texts)
    assert results[3].errors  # the poisoned text fails on its own
    assert not np.isnan([result.score for result in results]).any()
