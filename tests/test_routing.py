"""Per-kind routing (``by_kind``): prompts and prompt+response inputs decided by routes of their own."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from siren_ensemble import Ensemble, PromptResponse
from siren_ensemble.cli import cli
from siren_ensemble.config import EnsembleConfig
from siren_ensemble.conversation import Conversation
from siren_ensemble.errors import ConfigError, InputError
from siren_ensemble.input_kinds import kind_of
from siren_ensemble.testing import random_head

from .conftest import HIDDEN
from .test_serve import service

PROMPTS = ["How do I bake bread?", "Explain how to pick a lock.", "x", "The quick brown fox " * 12]
ANSWERS = ["Mix flour, water and salt.", "I can't help with that.", "y", "It jumps over the lazy dog. " * 6]
TOP_STAGES = [{"members": ["a"], "low": 0.45, "high": 0.9}, {"members": ["b"], "low": 0.35, "high": 0.65}, {"members": ["c"]}]
RESPONSE_STAGES = [{"members": ["c"], "low": 0.4, "high": 0.6}, {"members": ["a", "b"]}]


@pytest.fixture(scope="module")
def heads(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("routing")
    return {
        name: (backbone, random_head(str(tiny_models[arch]), layers=[0, 2], hidden_size=HIDDEN, max_length=48,
                                     seed=seed, scale=1.0).save(root / name))
        for seed, (name, arch, backbone) in enumerate([("a", "llama", "llama3"), ("b", "qwen3", "qwen3"), ("c", "qwen2", "qwen3")])
    }


def _raw(heads, **top) -> dict:
    members = [{"name": name, "backbone": backbone, "head": str(head)} for name, (backbone, head) in heads.items()]
    return {"members": members, "combiner": {"type": "cascade", "combine": "logit_mean", "stages": TOP_STAGES},
            "threshold": 0.5, **top}


RESPONSE_ROUTE = {"combiner": {"type": "cascade", "combine": "logit_mean", "stages": RESPONSE_STAGES}, "threshold": 0.45}


@pytest.fixture(scope="module")
def routed(heads) -> Ensemble:
    return Ensemble.from_config(EnsembleConfig.from_dict(_raw(heads, by_kind={"response": RESPONSE_ROUTE})))


@pytest.fixture(scope="module")
def unrouted(heads) -> Ensemble:
    """The same config without ``by_kind``: every input on the top-level route."""
    return Ensemble.from_config(EnsembleConfig.from_dict(_raw(heads)))


@pytest.fixture(scope="module")
def response_only(heads) -> Ensemble:
    """The response route as a config's top level: what a response must get from the routed ensemble."""
    return Ensemble.from_config(EnsembleConfig.from_dict({**_raw(heads), **RESPONSE_ROUTE}))


# ---- config ---------------------------------------------------------------------------------------

def test_a_route_with_only_a_threshold_keeps_the_top_level_combiner_and_calibration(heads):
    config = EnsembleConfig.from_dict(_raw(heads, by_kind={"response": {"threshold": 0.2}}))
    response = config.for_kind("response")
    assert response.threshold == 0.2 and response.combiner == config.combiner
    assert config.for_kind("prompt") is config and response.by_kind == {}


def test_a_route_with_its_own_combiner_does_not_inherit_a_threshold_chosen_for_another(heads):
    route = {"combiner": {"type": "mean"}}
    config = EnsembleConfig.from_dict(_raw(heads, by_kind={"response": route}))
    assert config.for_kind("response").threshold is None
    with pytest.raises(ConfigError, match=r"by_kind\.response: combiner\.type: Unknown combiner 'meen'.*mean"):
        EnsembleConfig.from_dict(_raw(heads, by_kind={"response": {"combiner": {"type": "meen"}}}))
    with pytest.raises(ConfigError, match=r"by_kind\.answer"):
        EnsembleConfig.from_dict(_raw(heads, by_kind={"answer": {"threshold": 0.3}}))
    with pytest.raises(ConfigError, match=r"by_kind\.response: threshold: the vote combiner"):
        EnsembleConfig.from_dict(_raw(heads, by_kind={"response": {"combiner": {"type": "vote"}, "threshold": 0.3}}))
    with pytest.raises(ConfigError, match=r"by_kind\.prompt: calibration: .*does not exist"):
        EnsembleConfig.from_dict(_raw(heads, by_kind={"prompt": {"calibration": "missing.json"}}))


# ---- which inputs are responses --------------------------------------------------------------------

def test_the_kind_of_each_input():
    assert kind_of("How do I bake bread?") == "prompt"
    assert kind_of(PromptResponse("q", "a")) == "response"
    assert kind_of(PromptResponse("q", "")) == "prompt"  # nothing answered yet
    assert kind_of(PromptResponse(None, "a")) == "response"
    assert kind_of(Conversation.parse([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])) == "response"
    assert kind_of(Conversation.parse([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}])) == "prompt"
    with pytest.raises(InputError, match="prompt: expected a string"):
        PromptResponse(3, "a")
    with pytest.raises(InputError, match="at least one"):
        PromptResponse()


# ---- the runtime --------------------------------------------------------------------------------

def test_prompts_take_the_top_route_and_responses_their_own(routed, unrouted, response_only):
    prompts = routed.score_batch(PROMPTS)
    assert [r.to_dict() | {"kind": None} for r in prompts] == [r.to_dict() | {"kind": None} for r in unrouted.score_batch(PROMPTS)]
    assert {r.kind for r in prompts} == {"prompt"} and all(r.threshold == 0.5 for r in prompts)
    pairs = [PromptResponse(p, a) for p, a in zip(PROMPTS, ANSWERS)]
    responses = routed.score_batch(pairs)
    expected = response_only.score_batch([pair.text for pair in pairs])
    assert [r.score for r in responses] == [r.score for r in expected]
    assert [r.decided_by for r in responses] == [r.decided_by for r in expected]
    assert [r.members for r in responses] == [r.members for r in expected]
    assert {r.kind for r in responses} == {"response"} and all(r.threshold == 0.45 for r in responses)
    # the routes really differ here: the response route runs c first, the top route a
    by_top = unrouted.score_batch([pair.text for pair in pairs])
    assert [r.members for r in responses] != [r.members for r in by_top]
    assert all(r.members["c"] is not None for r in responses)


def test_a_mixed_batch_gives_each_input_what_it_gets_alone(routed):
    conversation = Conversation.parse([{"role": "user", "content": PROMPTS[1]}, {"role": "assistant", "content": ANSWERS[1]}])
    question = Conversation.parse([{"role": "user", "content": PROMPTS[0]}])
    inputs = [PROMPTS[0], PromptResponse(PROMPTS[1], ANSWERS[1]), conversation, question, PROMPTS[3],
              PromptResponse(PROMPTS[2], "")]
    together = routed.score_batch(inputs)
    alone = [routed.score_batch([item])[0] for item in inputs]
    assert [r.to_dict() for r in together] == [r.to_dict() for r in alone]
    assert [r.kind for r in together] == ["prompt", "response", "response", "prompt", "prompt", "prompt"]


def test_score_with_prompt_and_response_is_a_response_and_a_caller_threshold_overrides_every_route(routed):
    result = routed.score(prompt=PROMPTS[1], response=ANSWERS[1])
    assert result.kind == "response" and result.threshold == 0.45
    assert routed.score(PROMPTS[1]).kind == "prompt"
    overridden = routed.score_batch([PROMPTS[1], PromptResponse(PROMPTS[1], ANSWERS[1])], threshold=0.9)
    assert [r.threshold for r in overridden] == [0.9, 0.9]
    assert all(r.is_harmful == (r.score >= 0.9) for r in overridden)
    assert routed.threshold_for("response") == 0.45 and routed.threshold_for("prompt") == 0.5


def test_results_say_their_kind_only_when_the_config_routes_by_kind(routed, unrouted):
    assert routed.score(prompt="q", response="a").to_dict()["kind"] == "response"
    assert "kind" not in unrouted.score(prompt="q", response="a").to_dict()


def test_a_stream_is_decided_by_the_response_route(routed, response_only):
    with routed.stream(prompt=PROMPTS[3]) as stream:
        for chunk in ["It jumps ", "over the lazy ", "dog. " * 4]:
            fed = stream.feed(chunk)
        final_text = stream.text
    expected = response_only.score(final_text)
    assert fed.kind == "response" and fed.threshold == 0.45
    assert fed.score == pytest.approx(expected.score, abs=1e-5)
    assert fed.decided_by == expected.decided_by


# ---- front ends -----------------------------------------------------------------------------------

def test_the_cli_routes_jsonl_pairs_as_responses(heads, tmp_path, write_config, response_only):
    config = write_config(_raw(heads, by_kind={"response": RESPONSE_ROUTE}))
    data = tmp_path / "inputs.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in [{"text": PROMPTS[0]}, {"prompt": PROMPTS[1], "response": ANSWERS[1]}]))
    result = CliRunner().invoke(cli, ["score", "--config", str(config), "--input", str(data)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [row["kind"] for row in rows] == ["prompt", "response"]
    assert rows[1]["threshold"] == 0.45
    assert rows[1]["score"] == pytest.approx(response_only.score(PromptResponse(PROMPTS[1], ANSWERS[1]).text).score, abs=1e-9)


def test_the_service_routes_prompt_and_response_bodies(routed):
    with service(routed, batch_wait_ms=5) as url:
        pair = httpx.post(f"{url}/v1/score", json={"prompt": PROMPTS[1], "response": ANSWERS[1]}).json()
        text = httpx.post(f"{url}/v1/score", json={"text": PROMPTS[1]}).json()
        moderation = httpx.post(f"{url}/v1/moderations", json={"input": PROMPTS[1]}).json()["results"][0]["siren"]
    assert moderation["kind"] == "prompt" and moderation["threshold"] == 0.5
    direct = routed.score(prompt=PROMPTS[1], response=ANSWERS[1])
    assert pair["kind"] == "response" and pair["threshold"] == 0.45 and pair["score"] == pytest.approx(direct.score, abs=1e-9)
    assert text["kind"] == "prompt" and text["threshold"] == 0.5


# ---- calibration per kind -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_split(synthetic_data, tmp_path_factory):
    """The synthetic split with every third record turned into a prompt and response (the text as the answer)."""
    from siren_ensemble.data.records import SafetyRecord, read_dataset, write_records

    out = tmp_path_factory.mktemp("mixed") / "split"
    out.mkdir()
    for split in ("train", "validation", "test"):
        records = [
            SafetyRecord(label=r.label, source=r.source, level="response", prompt="Go on, answer this one:", response=r.text,
                         group=r.group, categories=r.categories) if index % 3 == 0 else r
            for index, r in enumerate(read_dataset(synthetic_data, split))
        ]
        write_records(out / f"{split}.jsonl", records)
    return out


def test_calibrate_by_kind_chooses_each_kind_on_its_own_records_and_writes_the_routes(
        two_member_config, mixed_split, trained_heads, tmp_path):
    from siren_ensemble.data.records import read_dataset
    from siren_ensemble.decision import DecisionPath
    from siren_ensemble.evaluation.calibrate import calibrate_by_kind
    from siren_ensemble.evaluation.metrics import threshold_for_recall
    from siren_ensemble.evaluation.scoring import FeatureScorer
    from siren_ensemble.members import validate_plan

    report = calibrate_by_kind(two_member_config, mixed_split, 0.9, cache_dir=trained_heads["cache"], min_source_harmful=1)
    assert set(report["by_kind"]) == {"prompt", "response"}
    config = EnsembleConfig.from_dict(yaml_load(two_member_config), base_dir=two_member_config.parent)
    plans, _ = validate_plan(config)
    records = read_dataset(mixed_split, "validation")
    scores = DecisionPath.from_config(config, plans).scores(FeatureScorer(config, plans, trained_heads["cache"]).member_scores(records))
    for kind in ("prompt", "response"):
        rows = np.array([record.level == kind for record in records])
        labels = np.array([record.label for record in records])[rows]
        assert report["by_kind"][kind]["threshold"] == pytest.approx(threshold_for_recall(labels, scores[rows], 0.9), abs=1e-12)
        assert report["by_kind"][kind]["validation"]["harmful"] == int(labels.sum())
    written = two_member_config.parent / "by-kind.yaml"
    result = CliRunner().invoke(cli, ["calibrate", "--config", str(two_member_config), "--data", str(mixed_split),
                                      "--target-recall", "0.9", "--by-kind", "--write-config", str(written),
                                      "--cache-dir", str(trained_heads["cache"])])
    assert result.exit_code == 0, result.output
    routes = EnsembleConfig.from_dict(yaml_load(written), base_dir=written.parent).by_kind
    for kind in ("prompt", "response"):
        assert routes[kind].threshold == pytest.approx(report["by_kind"][kind]["threshold"], abs=1e-6)


def test_calibrate_by_kind_out_of_source_refits_once_and_writes_the_held_out_scores(
        two_member_config, mixed_split, trained_heads, tmp_path, monkeypatch):
    from siren_ensemble.evaluation import calibrate as calibrate_module
    from siren_ensemble.evaluation.out_of_source import RefitOptions

    calls = []
    real = calibrate_module.out_of_source_scores
    monkeypatch.setattr(calibrate_module, "out_of_source_scores", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    scores_out = tmp_path / "held.npz"
    report = calibrate_module.calibrate_by_kind(
        two_member_config, mixed_split, 0.9, cache_dir=trained_heads["cache"], min_source_harmful=1, out_of_source=True,
        source_folds=2, refit=RefitOptions(c_grid=(0.1, 1.0)), scores_out=scores_out)
    assert len(calls) == 1
    saved = np.load(scores_out)
    assert list(saved["member_names"]) == ["llama", "qwen3"]
    assert sorted(set(saved["kinds"].tolist())) == ["prompt", "response"]
    from sklearn.metrics import roc_auc_score

    for kind in ("prompt", "response"):
        held = report["by_kind"][kind]["out_of_source"]
        rows = saved["kinds"] == kind
        assert held["records"] == int(rows.sum())
        assert held["by_kind"].keys() == {kind}
        for column, name in enumerate(saved["member_names"]):  # each member's own held-out ranking, beside the ensemble's
            expected = roc_auc_score(saved["labels"][rows], saved["member_scores"][rows, column])
            assert held["auroc"][kind][f"member {name}"] == pytest.approx(expected, abs=1e-12)
        assert 0.5 <= held["auroc"][kind]["ensemble"] <= 1.0


def yaml_load(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_evaluate_decides_a_routed_config_as_the_runtime_does(heads, mixed_split, write_config, tmp_path):
    from siren_ensemble.data.records import read_dataset
    from siren_ensemble.evaluation.evaluate import EvaluateOptions, evaluate
    from siren_ensemble.evaluation.metrics import binary_metrics

    path = write_config(_raw(heads, by_kind={"response": RESPONSE_ROUTE}), name="routed.yaml")
    report = evaluate(path, mixed_split, EvaluateOptions(baselines=False, leave_one_source_out=False, stackers=False,
                                                         record_scores=True), cache_dir=tmp_path / "cache")
    test = read_dataset(mixed_split, "test")
    ensemble = Ensemble.from_config(path)
    results = ensemble.score_batch([PromptResponse(r.prompt, r.response) if r.level == "response" else r.text for r in test])
    assert [r.kind for r in results] == [r.level for r in test]
    reported = np.array(report["record_scores"]["ensemble (config)"])
    assert list(reported >= 0.5) == [r.is_harmful for r in results]  # every verdict is the runtime's
    labels = np.array([r.label for r in test])
    for kind in ("prompt", "response"):
        rows = np.array([r.level == kind for r in test])
        runtime = binary_metrics(labels[rows], np.array([r.score for r in results])[rows], ensemble.threshold_for(kind))
        by_kind = report["by_kind"][kind]["ensemble (config)"]
        for key in ("auroc", "recall", "fpr"):
            assert by_kind[key] == pytest.approx(runtime.to_dict()[key], abs=1e-6), (kind, key)


def test_scores_decided_at_different_thresholds_share_one_scale_with_the_same_verdicts():
    from siren_ensemble.evaluation.metrics import ROUTED_THRESHOLD, onto_shared_scale

    scores = np.random.default_rng(1).uniform(0, 1, 400)
    thresholds = np.where(np.arange(400) % 2 == 0, 0.2, 0.7)
    shared = onto_shared_scale(scores, thresholds)
    assert list(shared >= ROUTED_THRESHOLD) == list(scores >= thresholds)
    for value in (0.2, 0.7):  # the order within one threshold is kept
        rows = thresholds == value
        assert list(np.argsort(shared[rows])) == list(np.argsort(scores[rows]))
    assert onto_shared_scale(np.array([0.0, 1.0]), 0.3).tolist() == [0.0, 1.0]


def test_evaluate_conversations_counts_each_verdict_at_its_own_route(heads, write_config, tmp_path):
    from siren_ensemble.data.conversations import ConversationRecord, write_conversations
    from siren_ensemble.evaluation.conversations import evaluate_conversations

    with pytest.raises(ConfigError, match=r"by_kind\.response\.combiner\.stages\[0\]\.low: 0\.45 is above the decision threshold 0\.05"):
        Ensemble.from_config(write_config(_raw(heads, by_kind={"response": {"threshold": 0.05}}), name="bands.yaml"))
    route = {"combiner": {"type": "logit_mean"}, "threshold": 0.05}
    config = write_config(_raw(heads, by_kind={"response": route}), name="routed-chat.yaml")
    chats = []
    for index, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS)):
        turns = [{"role": "user", "content": prompt}] + ([{"role": "assistant", "content": answer}] if index % 2 else [])
        chats.append(ConversationRecord(f"c{index}", "benign_multi_turn", 0, "test", Conversation.parse(turns)))
    path = tmp_path / "chats.jsonl"
    write_conversations(path, chats)
    report = evaluate_conversations(config, path, window=1)
    ensemble = Ensemble.from_config(config)
    in_context = ensemble.score_batch([ensemble.conversation_input(c.conversation, 1, judge="context") for c in chats])
    assert [r.kind for r in in_context] == ["prompt", "response", "prompt", "response"]
    # Every answered chat is flagged at the response route's 0.05, none of the others at 0.5: the FPR says so.
    assert [r.is_harmful for r in in_context] == [False, True, False, True]
    assert report["overall"]["in_context"]["fpr"] == pytest.approx(0.5)
    assert report["threshold"] == {"prompt": 0.5, "response": 0.05}


def test_corpus_rows_carry_the_kind_of_a_routed_config(routed, unrouted):
    pytest.importorskip("pyarrow")
    from siren_ensemble.ray.rows import output_schema, results_table

    results = routed.score_batch(["q", PromptResponse("q", "a")])
    table = results_table(None, results, routed)
    assert table.column("kind").to_pylist() == ["prompt", "response"]
    assert "kind" in output_schema(unrouted, None).names  # null for an unrouted config, left out of its JSON lines
