"""The ensemble: shared backbones, batching that changes nothing, fail-closed scoring, input checks."""

import math

import pytest
import torch

from siren_ensemble import Ensemble, InputError, MemberError
from siren_ensemble.extraction import LoadedBackbone

from .conftest import DEPTH, TEXTS


def members(head, names=("a", "b"), **extra):
    return [{"name": name, "backbone": "llama3", "head": str(head), **extra} for name in names]


@pytest.fixture
def two_heads(tiny_models, write_head):
    return (
        write_head(tiny_models["llama"], name="h1", layers=[0, 2], seed=1),
        write_head(tiny_models["llama"], name="h2", layers=[1, DEPTH - 1], pooling="mlp_mean", seed=2),
    )


def count_loads(monkeypatch):
    loads = []
    original = LoadedBackbone.load.__func__

    def counting(cls, adapter, weights):
        loads.append(adapter.spec)
        return original(cls, adapter, weights)

    monkeypatch.setattr(LoadedBackbone, "load", classmethod(counting))
    return loads


def count_forwards(ensemble):
    calls = []
    for shared in ensemble._passes:
        shared.backbone.model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_members_on_the_same_backbone_share_the_model_and_the_forward_pass(two_heads, write_config, monkeypatch):
    loads = count_loads(monkeypatch)
    config = write_config({"members": [
        {"name": "a", "backbone": "llama3", "head": str(two_heads[0])},
        {"name": "b", "backbone": "llama3", "head": str(two_heads[1])},
    ], "batching": {"max_padding": 1.0}})  # no length buckets: all texts in one batch
    ensemble = Ensemble.from_config(config)
    assert len(loads) == 1
    forwards = count_forwards(ensemble)
    together = ensemble.score_batch(TEXTS)
    assert len(forwards) == 1  # 8 short texts: one batch, one pass for both heads

    for index, head in enumerate(two_heads):
        alone = Ensemble.from_config(write_config({"members": [{"name": "x", "backbone": "llama3", "head": str(head)}]}, name=f"{index}.yaml"))
        for shared_result, alone_result in zip(together, alone.score_batch(TEXTS)):
            assert shared_result.members["ab"[index]] == pytest.approx(alone_result.score, abs=1e-6)


def test_different_dtype_or_max_length_do_not_share_a_pass(tiny_models, write_head, write_config, monkeypatch):
    short = write_head(tiny_models["llama"], name="short", max_length=16)
    long = write_head(tiny_models["llama"], name="long", max_length=64)
    loads = count_loads(monkeypatch)
    ensemble = Ensemble.from_config(write_config({"members": [
        {"name": "s", "backbone": "llama3", "head": str(short)},
        {"name": "l", "backbone": "llama3", "head": str(long)},
        {"name": "b", "backbone": "llama3", "head": str(long), "dtype": "bfloat16"},
    ]}))
    assert [spec.dtype for spec in loads] == ["float32", "bfloat16"]
    assert len(ensemble._passes) == 3
    result = ensemble.score("word " * 30)
    assert result.truncated
    assert result.members["s"] != result.members["l"]
    assert result.members["b"] == pytest.approx(result.members["l"], abs=0.05)  # bf16 is close, not equal


def test_batching_and_order_do_not_change_scores(two_heads, write_config):
    config = {"members": members(two_heads[0])}
    texts = TEXTS + [f"text number {i} " * (i % 7 + 1) for i in range(30)]
    big = Ensemble.from_config(write_config({**config, "batching": {"max_tokens": 100000, "max_texts": 1000}}, name="big.yaml"))
    small = Ensemble.from_config(write_config({**config, "batching": {"max_tokens": 40, "max_texts": 3}}, name="small.yaml"))
    reference = [result.score for result in big.score_batch(texts)]
    assert [result.score for result in small.score_batch(texts)] == pytest.approx(reference, abs=1e-6)
    assert [result.score for result in small.score_batch(texts[::-1])] == pytest.approx(reference[::-1], abs=1e-6)
    single = [big.score(text).score for text in texts[:8]]
    assert single == pytest.approx(reference[:8], abs=1e-6)


def test_result_fields_and_threshold_override(two_heads, write_config):
    ensemble = Ensemble.from_config(write_config({"members": members(two_heads[0]), "combiner": {"type": "max"}, "threshold": 0.3}))
    result = ensemble.score("How do I bake bread?")
    assert set(result.to_dict()) == {"score", "is_harmful", "threshold", "members", "truncated"}
    assert result.threshold == 0.3
    assert result.score == max(result.members.values())
    low, high = ensemble.score("How do I bake bread?", threshold=0.0), ensemble.score("How do I bake bread?", threshold=1.0)
    assert (low.is_harmful, low.threshold) == (True, 0.0)
    assert high.is_harmful == (result.score >= 1.0)


def test_vote_results_report_the_rules_threshold(two_heads, write_config):
    ensemble = Ensemble.from_config(write_config({
        "members": members(two_heads[0], names=("a", "b", "c")), "combiner": {"type": "vote", "rule": "majority"},
    }))
    result = ensemble.score("hello")
    assert result.threshold == pytest.approx(2 / 3)
    assert result.score in (0.0, 1.0)  # identical members vote alike


def test_prompt_response_is_the_joined_text(two_heads, write_config):
    ensemble = Ensemble.from_config(write_config({"members": members(two_heads[0])}))
    assert ensemble.score(prompt="Q?", response="A.").score == ensemble.score("Q?\nA.").score


@pytest.mark.parametrize("call,message", [
    (lambda e: e.score_batch(["ok", 3]), r"texts\[1\]: expected a string, got int"),
    (lambda e: e.score_batch(["ok", None]), r"texts\[1\]: expected a string, got NoneType"),
    (lambda e: e.score_batch("a single string"), "texts: expected a list of strings, got str"),
    (lambda e: e.score("a", prompt="b"), "either `text` or `prompt`/`response`"),
    (lambda e: e.score(), "provide `text`"),
    (lambda e: e.score(prompt=b"bytes"), "prompt: expected a string, got bytes"),
    (lambda e: e.score("a", threshold=1.5), "threshold: expected a number between 0 and 1"),
    (lambda e: e.score_streaming(None), "prefix: expected a string"),
])
def test_bad_input_is_a_clear_error(two_heads, write_config, call, message):
    ensemble = Ensemble.from_config(write_config({"members": members(two_heads[0])}))
    with pytest.raises(InputError, match=message):
        call(ensemble)


def test_empty_and_whitespace_texts_have_a_defined_score(two_heads, write_config):
    ensemble = Ensemble.from_config(write_config({"members": members(two_heads[0])}))
    assert ensemble.score_batch([]) == []
    empty, blank, space = ensemble.score_batch(["", "  \n\t ", " "])
    assert empty.score == blank.score == space.score  # all are scored as the reference's " "
    assert 0.0 <= empty.score <= 1.0


def break_member(ensemble, name, how):
    position = ensemble.member_names.index(name)
    head = ensemble.plans[position].head
    if how == "raise":
        def failing(_pooled):
            raise RuntimeError("CUDA out of memory (simulated)")
        head.forward = failing
    else:
        head.forward = lambda pooled: torch.full((next(iter(pooled.values())).shape[0],), float("nan"))


@pytest.mark.parametrize("how,reason", [("raise", "head failed: RuntimeError: CUDA out of memory"), ("nan", "non-finite score")])
def test_fail_closed_by_default(two_heads, write_config, how, reason):
    ensemble = Ensemble.from_config(write_config({"members": members(two_heads[0]), "threshold": 0.99}))
    break_member(ensemble, "b", how)
    result = ensemble.score("What is the capital of France?")
    assert result.is_harmful and result.score == 1.0
    assert reason in result.errors["b"]
    assert result.members["b"] is None and result.members["a"] is not None


def test_forward_failure_fails_closed_for_every_member_of_the_pass(two_heads, write_config, monkeypatch):
    ensemble = Ensemble.from_config(write_config({"members": members(two_heads[0])}))
    backbone = ensemble._passes[0].backbone

    def broken(*_args, **_kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(backbone, "pooled_states", broken)
    result = ensemble.score("hello")
    assert result.is_harmful and set(result.errors) == {"a", "b"}
    assert "forward pass failed: RuntimeError: device lost" in result.errors["a"]


def test_fail_open_counts_a_failed_member_as_benign(two_heads, write_config):
    ensemble = Ensemble.from_config(write_config({"members": members(two_heads[0]), "on_member_error": "fail_open"}))
    healthy = ensemble.score("hello").members["a"]
    break_member(ensemble, "b", "raise")
    result = ensemble.score("hello")
    assert result.score == pytest.approx(healthy / 2)
    assert "b" in result.errors


def test_raise_policy_raises(two_heads, write_config):
    ensemble = Ensemble.from_config(write_config({"members": members(two_heads[0]), "on_member_error": "raise"}))
    break_member(ensemble, "a", "raise")
    with pytest.raises(MemberError, match="member 'a' failed on text 0"):
        ensemble.score("hello")


def test_scores_are_probabilities(two_heads, write_config):
    ensemble = Ensemble.from_config(write_config({"members": members(two_heads[1])}))
    for result in ensemble.score_batch(TEXTS):
        assert 0.0 <= result.score <= 1.0 and math.isfinite(result.score)


def test_device_auto_places_through_accelerate(two_heads, write_config):
    plain = Ensemble.from_config(write_config({"members": members(two_heads[0], names=("a",))}, name="cpu.yaml"))
    auto = Ensemble.from_config(write_config({
        "members": members(two_heads[0], names=("a",), device="auto", max_memory={"cpu": "2GiB"}),
    }, name="auto.yaml"))
    model = auto._passes[0].backbone.model
    assert set(getattr(model, "hf_device_map", {"": "cpu"}).values()) <= {"cpu", torch.device("cpu")}
    assert [r.score for r in auto.score_batch(TEXTS)] == pytest.approx([r.score for r in plain.score_batch(TEXTS)], abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("device", ["cuda:0", "auto"])
def test_cuda_placement_matches_cpu(two_heads, write_config, device):
    plain = Ensemble.from_config(write_config({"members": members(two_heads[1], names=("a",))}, name="cpu.yaml"))
    gpu = Ensemble.from_config(write_config({"members": members(two_heads[1], names=("a",), device=device)}, name="gpu.yaml"))
    assert gpu._passes[0].backbone.input_device.type == "cuda"
    assert [r.score for r in gpu.score_batch(TEXTS)] == pytest.approx([r.score for r in plain.score_batch(TEXTS)], abs=1e-4)
