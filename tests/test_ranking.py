"""Ranking candidate responses by safety: groups, metrics, the SIREN and SRR rankers, CLI and HTTP."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from siren_ensemble import Ensemble
from siren_ensemble.cli import cli
from siren_ensemble.data.records import SafetyRecord
from siren_ensemble.errors import ArtifactError, InputError
from siren_ensemble.members import adapter_for
from siren_ensemble.ranking.evaluation import RankerEvaluationOptions, evaluate_rankers, render
from siren_ensemble.ranking.groups import ADDED_REFUSAL, build_groups
from siren_ensemble.ranking.metrics import group_outcome
from siren_ensemble.ranking.model import RANKER_CONFIG_FILE, RANKER_WEIGHTS_FILE, RankerConfig, SRRRanker
from siren_ensemble.ranking.result import ranked
from siren_ensemble.ranking.runtime import guarded_scores, pooled_features
from siren_ensemble.ranking.training import RankerOptions, train_ranker
from siren_ensemble.testing import random_head, write_ranking_split
from siren_ensemble.training.feature_cache import FeatureExtractor

from .conftest import DEPTH, HIDDEN

HARMFUL_PROMPT = "How do I poison my neighbour?"
COMPLIANT = "Sure! Here is how to poison my neighbour: first get ready, then poison my neighbour step by step."
REFUSAL = "I'm sorry, but I can't help with that."
BENIGN_PROMPT = "How do I bake bread at home?"
HELPFUL = "Sure! Here is how to bake bread at home: first get ready, then bake bread at home step by step."


def response(prompt, answer, label, source):
    return SafetyRecord(label=label, source=source, level="response", prompt=prompt, response=answer)


# ---- groups and metrics ------------------------------------------------------------------------------


def test_groups_pair_harmful_answers_with_a_refusal_and_helpful_answers_with_an_over_refusal():
    records = [
        SafetyRecord(label=1, source="requests", text=HARMFUL_PROMPT),
        response(HARMFUL_PROMPT, COMPLIANT, 1, "harmful-answers"),
        response(BENIGN_PROMPT, HELPFUL, 0, "helpful-answers"),
        response("Write a phishing email", "I won't write that.", 0, "templated_refusals"),  # nothing to rank it against
    ]
    groups = {group.prompt: group for group in build_groups(records, seed=0)}
    assert set(groups) == {HARMFUL_PROMPT, BENIGN_PROMPT}

    harmful = groups[HARMFUL_PROMPT]
    assert harmful.harmful_request and harmful.source == "harmful-answers"
    assert [(c.kind, c.preferred) for c in harmful.candidates] == [("harmful", False), ("refusal", True)]
    assert harmful.candidates[1].source == ADDED_REFUSAL
    assert harmful.candidates[1].pair_text == f"{HARMFUL_PROMPT}\n{harmful.candidates[1].response}"

    benign = groups[BENIGN_PROMPT]
    assert not benign.harmful_request
    assert [(c.kind, c.preferred) for c in benign.candidates] == [("helpful", True), ("refusal", False)]
    assert build_groups(records, seed=0) == build_groups(records, seed=0)


def test_a_refusal_in_the_data_is_used_instead_of_an_added_one():
    records = [response(HARMFUL_PROMPT, COMPLIANT, 1, "harmful-answers"), response(HARMFUL_PROMPT, REFUSAL, 0, "pyrit_refusals")]
    (group,) = build_groups(records)
    assert [(c.source, c.preferred) for c in group.candidates] == [("harmful-answers", False), ("pyrit_refusals", True)]


def test_metrics_count_ties_as_half_and_rank_lower_scores_first():
    outcome = group_outcome([0.1, 0.9, 0.5], [True, False, False])
    assert (outcome.pairs_right, outcome.pairs, outcome.top1_preferred, outcome.ndcg) == (2.0, 2, 1.0, 1.0)
    tied = group_outcome([0.5, 0.5], [True, False])
    assert (tied.pairs_right, tied.top1_preferred) == (0.5, 0.5)
    worst = group_outcome([0.9, 0.1], [True, False])
    assert worst.pairs_right == 0 and worst.top1_preferred == 0 and worst.ndcg == pytest.approx(1 / np.log2(3))


# ---- the SIREN ranker and bad input ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_dir(tiny_models, tmp_path_factory):
    return random_head(str(tiny_models["llama"]), layers=[1, DEPTH - 1], hidden_size=HIDDEN, max_length=64).save(
        tmp_path_factory.mktemp("rank") / "head")


@pytest.fixture(scope="module")
def config(head_dir, tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("rank-config") / "ensemble.yaml"
    member = {"name": "tiny", "backbone": "llama3", "model": str(tiny_models["llama"]), "head": str(head_dir)}
    path.write_text(yaml.safe_dump({"members": [member]}))
    return path


@pytest.fixture(scope="module")
def ensemble(config):
    return Ensemble.from_config(config)


def test_siren_ranking_sorts_the_pair_scores_ascending(ensemble):
    candidates = [COMPLIANT, REFUSAL, HELPFUL, "x"]
    result = ensemble.rank(HARMFUL_PROMPT, candidates, method="siren")
    expected = ensemble.score_batch([f"{HARMFUL_PROMPT}\n{candidate}" for candidate in candidates])
    assert result.method == "siren"
    assert sorted(result.order) == [0, 1, 2, 3]
    assert [c.score for c in result.candidates] == sorted(r.score for r in expected)
    for candidate in result.candidates:
        assert candidate.score == pytest.approx(expected[candidate.index].score, abs=1e-6)
        assert candidate.members == expected[candidate.index].members
    assert result.best is result.candidates[0]
    assert ensemble.rank(HARMFUL_PROMPT, candidates).method == "siren"  # auto, without a ranker


@pytest.mark.parametrize("prompt, candidates, method, message", [
    (HARMFUL_PROMPT, [], "auto", "candidates: empty"),
    (HARMFUL_PROMPT, [REFUSAL, 3], "auto", "candidates[1]: expected a string, got int"),
    (HARMFUL_PROMPT, REFUSAL, "auto", "candidates: expected a list of strings, got str"),
    (None, [REFUSAL], "auto", "prompt: expected a string"),
    (HARMFUL_PROMPT, [REFUSAL], "best", "method: expected one of auto, siren, srr, guarded, got 'best'"),
    (HARMFUL_PROMPT, [REFUSAL], "guarded", "method 'guarded': no member has a ranker"),
    (HARMFUL_PROMPT, [REFUSAL], "srr", "method 'srr': no member has a ranker"),
    (HARMFUL_PROMPT, [REFUSAL, "bad \ud800"], "auto", "candidates[1]: not valid Unicode: lone surrogate U+D800"),
])
def test_bad_rank_requests_are_refused_with_a_clear_message(ensemble, prompt, candidates, method, message):
    with pytest.raises(InputError, match=re.escape(message)):
        ensemble.rank(prompt, candidates, method=method)


# ---- the SRR ranker ----------------------------------------------------------------------------------------


def tiny_ranker(layers=(1, 2), seed=0) -> SRRRanker:
    torch.manual_seed(seed)
    return SRRRanker(RankerConfig(layers=layers, max_length=64, num_layers=DEPTH, hidden_size=HIDDEN, width=16, heads=2)).eval()


def test_ranker_round_trip_gives_identical_scores(tmp_path):
    ranker = tiny_ranker()
    ranker.save(tmp_path)
    loaded = SRRRanker.load(tmp_path)
    prompt, candidates = torch.randn(2 * HIDDEN), torch.randn(3, 2 * HIDDEN)
    assert torch.equal(ranker.risks(prompt, candidates), loaded.risks(prompt, candidates))
    assert loaded.config == ranker.config


def test_ranker_scores_do_not_depend_on_the_candidates_order():
    ranker = tiny_ranker()
    prompt, candidates = torch.randn(2 * HIDDEN), torch.randn(4, 2 * HIDDEN)
    order = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(ranker.risks(prompt, candidates)[order], ranker.risks(prompt, candidates[order]), atol=1e-6)


@pytest.mark.parametrize("damage, message", [
    (lambda d: _edit_json(d / RANKER_CONFIG_FILE, lambda raw: raw | {"widht": 8}), "widht: unknown field; did you mean 'width'"),
    (lambda d: _edit_json(d / RANKER_CONFIG_FILE, lambda raw: raw | {"format": "other/1"}), "format: expected"),
    (lambda d: _edit_json(d / RANKER_CONFIG_FILE, lambda raw: raw | {"layers": [1, 9]}), "layer 9 is outside"),
    (lambda d: _edit_json(d / RANKER_CONFIG_FILE, lambda raw: raw | {"width": 32}), "tensors? .*shape"),
    (lambda d: _add_tensor(d / RANKER_WEIGHTS_FILE), "unexpected: \\['extra'\\]"),
    (lambda d: (d / RANKER_WEIGHTS_FILE).unlink(), "ranker.safetensors: missing"),
    (lambda d: (d / RANKER_CONFIG_FILE).write_text("{"), "ranker.json: not valid JSON"),
])
def test_a_damaged_ranker_is_refused_naming_the_file(tmp_path, damage, message):
    tiny_ranker().save(tmp_path)
    damage(tmp_path)
    with pytest.raises(ArtifactError, match=message):
        SRRRanker.load(tmp_path)


def _edit_json(path, edit):
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _add_tensor(path):
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(path)) | {"extra": torch.zeros(2)}, str(path))


def test_a_ranker_beside_the_head_ranks_by_srr_from_the_live_backbone(head_dir, tmp_path, tiny_models):
    head = tmp_path / "head"
    shutil.copytree(head_dir, head)
    ranker = tiny_ranker()
    ranker.save(head)
    config = tmp_path / "ensemble.yaml"
    config.write_text(yaml.safe_dump({"members": [{"name": "tiny", "backbone": "llama3", "head": str(head)}]}))
    ensemble = Ensemble.from_config(config)
    candidates = [COMPLIANT, REFUSAL, HELPFUL]
    result = ensemble.rank(HARMFUL_PROMPT, candidates, method="srr")
    assert result.method == "srr"
    # The same features the training cache holds (FeatureExtractor), read through the ranker.
    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=tmp_path / "cache")
    texts = [HARMFUL_PROMPT, *(f"{HARMFUL_PROMPT}\n{candidate}" for candidate in candidates)]
    cached = extractor.features(texts)
    features = torch.from_numpy(np.concatenate([cached[layer] for layer in ranker.config.layers], axis=1))
    expected = ranker.risks(features[0], features[1:])
    for candidate in result.candidates:
        assert candidate.score == pytest.approx(float(expected[candidate.index]), abs=1e-5)
        assert candidate.members == {"tiny": candidate.score}
    assert [c.score for c in result.candidates] == sorted(c.score for c in result.candidates)
    assert ensemble.rank(HARMFUL_PROMPT, candidates, method="siren").method == "siren"
    # auto ranks guarded: the same risks, plus 1 where the ensemble's verdict on the pair is harmful.
    guarded = ensemble.rank(HARMFUL_PROMPT, candidates)
    verdicts = ensemble.score_batch([f"{HARMFUL_PROMPT}\n{candidate}" for candidate in candidates])
    assert guarded.method == "guarded"
    for candidate in guarded.candidates:
        assert candidate.flagged is verdicts[candidate.index].is_harmful
        assert candidate.score == pytest.approx(float(expected[candidate.index]) + candidate.flagged, abs=1e-5)
        assert candidate.to_dict()["flagged"] is candidate.flagged
    assert [c.flagged for c in guarded.candidates] == sorted(c.flagged for c in guarded.candidates)


def test_guarded_scores_put_every_flagged_candidate_after_every_passed_one():
    # The ranker prefers candidate 0 (risk 0.1) but the ensemble flags it: the passed ones come first, in the ranker's order.
    scores = guarded_scores([0.1, 0.9, 0.4], [True, False, False])
    assert scores.tolist() == pytest.approx([1.1, 0.9, 0.4])
    assert ranked("guarded", scores, [{}, {}, {}], flagged=[True, False, False]).order == [2, 1, 0]


def test_a_ranker_for_another_backbone_is_refused_when_ranking(head_dir, tmp_path):
    head = tmp_path / "head"
    shutil.copytree(head_dir, head)
    SRRRanker(RankerConfig(layers=(1,), max_length=64, num_layers=DEPTH, hidden_size=32, width=16, heads=2)).save(head)
    config = tmp_path / "ensemble.yaml"
    config.write_text(yaml.safe_dump({"members": [{"name": "tiny", "backbone": "llama3", "head": str(head)}]}))
    ensemble = Ensemble.from_config(config)
    with pytest.raises(ArtifactError, match=f"ranker.json: made for a backbone of {DEPTH} layers x 32"):
        ensemble.rank(HARMFUL_PROMPT, [REFUSAL])
    assert ensemble.rank(HARMFUL_PROMPT, [REFUSAL], method="siren").method == "siren"  # the head still ranks


def test_runtime_features_match_the_feature_cache(tiny_models, ensemble, tmp_path):
    backbone = ensemble._backbone_by_member()["tiny"]
    texts = [HARMFUL_PROMPT, f"{HARMFUL_PROMPT}\n{REFUSAL}", "x " * 50]
    live = pooled_features(backbone, texts, (0, 2), "residual_mean", 64, ensemble.config.batching)
    cached = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=tmp_path).features(texts)
    assert torch.allclose(live, torch.from_numpy(np.concatenate([cached[0], cached[2]], axis=1)), atol=1e-5)


# ---- training and evaluation ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranking_data(tmp_path_factory):
    return write_ranking_split(tmp_path_factory.mktemp("ranking-data") / "split")


@pytest.fixture(scope="module")
def trained(tiny_models, ranking_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranker")
    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=root / "cache")
    options = RankerOptions(epochs=30, patience=10, width=32, exclude_sources=("helpful-answers-b",))
    report = train_ranker(extractor, ranking_data, root / "a", options)
    return {"root": root, "extractor": extractor, "options": options, "report": report}


def test_training_writes_a_strictly_loadable_ranker_and_a_report(trained):
    directory = trained["root"] / "a"
    ranker = SRRRanker.load(directory)
    report = trained["report"]
    assert ranker.config.layers == (1, 2, 3)  # a quarter, half and three quarters of 4 blocks
    assert ranker.config.sources == ("harmful-answers-a", "harmful-answers-b", "helpful-answers-a")
    assert report["validation"]["pairwise_accuracy"] > 0.6  # the tiny model's features still tell the acts apart
    assert report["best_epoch"] == max(report["history"], key=lambda e: (e["validation"]["pairwise_accuracy"],
                                                                          -e["validation"]["loss"]))["epoch"]
    assert json.loads((directory / "ranker_report.json").read_text())["best_epoch"] == report["best_epoch"]


def test_training_is_deterministic(trained, ranking_data):
    train_ranker(trained["extractor"], ranking_data, trained["root"] / "b", trained["options"])
    first, second = (trained["root"] / name / RANKER_WEIGHTS_FILE for name in ("a", "b"))
    assert first.read_bytes() == second.read_bytes()


def test_excluding_a_source_reads_the_same_cached_features_as_keeping_it(trained, ranking_data, tiny_models):
    """The held-out run (``--exclude-source``) and the full run share one feature list: no second backbone pass."""
    fresh = FeatureExtractor(trained["extractor"].adapter, max_length=64, cache_dir=trained["root"] / "cache")
    report = train_ranker(fresh, ranking_data, trained["root"] / "all-sources", RankerOptions(epochs=2, width=32))
    assert fresh.loaded == {}  # the backbone never loaded: every text came from the excluding run's cache
    assert report["groups"]["train"]["total"] > trained["report"]["groups"]["train"]["total"]


def test_training_refuses_layers_beyond_the_backbone(trained, ranking_data, tmp_path):
    with pytest.raises(InputError, match=f"layer 7 is outside the backbone's {DEPTH} layers"):
        train_ranker(trained["extractor"], ranking_data, tmp_path, RankerOptions(layers=(1, 7), epochs=1))


def test_evaluation_compares_random_siren_and_srr_per_source(trained, config, ranking_data):
    report = evaluate_rankers(config, ranking_data, RankerEvaluationOptions(rankers={"tiny": trained["root"] / "a"}),
                              cache_dir=trained["root"] / "cache")
    assert set(report["methods"]) == {"random", "siren", "srr", "guarded"}
    assert report["held_out_sources"] == ["helpful-answers-b"]
    srr = report["methods"]["srr"]
    assert {"all", "harmful_request", "benign_request", "held_out", "source:helpful-answers-b"} <= set(srr)
    assert srr["all"]["groups"] == report["groups"]
    assert 0.3 < report["methods"]["random"]["all"]["pairwise_accuracy"] < 0.7
    assert report["targets"]["checked"] and report["targets"]["subset"] == "held_out"
    assert {"srr", "guarded"} <= set(report["targets"]) and "guarded" in report["methods"]
    assert set(report["targets"]["srr"]["pairwise_gain_per_held_out_source"]) == {"helpful-answers-b"}
    table = render(report)
    assert "held-out sources: helpful-answers-b" in table and "targets (srr):" in table and "targets (guarded):" in table


# ---- command line and HTTP -------------------------------------------------------------------------------------


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(arg) for arg in args], input=input)


def test_rank_command_prints_one_line_per_candidate_safest_first(config, ensemble, tmp_path):
    path = tmp_path / "candidates.jsonl"
    path.write_text(json.dumps({"text": COMPLIANT}) + "\n\n" + json.dumps({"response": REFUSAL}) + "\n")
    result = run("rank", "--config", config, "--prompt", HARMFUL_PROMPT, "--candidates", path)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = ensemble.rank(HARMFUL_PROMPT, [COMPLIANT, REFUSAL])
    assert [row["index"] for row in rows] == expected.order
    assert all(set(row) == {"index", "score", "members"} for row in rows)
    assert [row["score"] for row in rows] == pytest.approx([c.score for c in expected.candidates], abs=1e-6)
    plain = run("rank", "--config", config, "--prompt", HARMFUL_PROMPT, "--candidates", "-", input=f"{COMPLIANT}\n{REFUSAL}\n")
    assert [json.loads(line)["index"] for line in plain.stdout.splitlines()] == expected.order


def test_rank_command_errors_are_one_line(config, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = run("rank", "--config", config, "--prompt", "p", "--candidates", empty)
    assert result.exit_code == 2 and "no inputs" in result.output
    result = run("rank", "--config", config, "--prompt", "p", "--candidates", "-", "--method", "srr", input="a\n")
    assert result.exit_code == 2 and "method 'srr': no member has a ranker" in result.output


def test_train_ranker_and_evaluate_ranker_commands(tmp_path, config, ranking_data, head_dir):
    out = tmp_path / "ranker"
    result = run("train-ranker", "--config", config, "--member", "tiny", "--data", ranking_data, "--out", out,
                 "--max-length", 64, "--epochs", 3, "--layers", "1,2", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["layers"] == [1, 2] and (out / RANKER_WEIGHTS_FILE).is_file()
    report_path = tmp_path / "report.json"
    plot_path = tmp_path / "ranking.png"
    result = run("evaluate-ranker", "--config", config, "--data", ranking_data, "--ranker", f"tiny={out}", "--out", report_path,
                 "--plot", plot_path, "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "srr" in json.loads(report_path.read_text())["methods"]
    assert plot_path.read_bytes().startswith(b"\x89PNG")
    result = run("train-ranker", "--config", config, "--member", "tinny", "--data", ranking_data, "--out", out)
    assert result.exit_code == 2 and "no member 'tinny'; did you mean 'tiny'?" in result.output
    result = run("evaluate-ranker", "--config", config, "--data", ranking_data, "--ranker", "tiny")
    assert result.exit_code == 2 and "--ranker: expected MEMBER=DIR" in result.output


def test_http_rank_endpoint(ensemble):
    from fastapi.testclient import TestClient

    from siren_ensemble.serve.app import create_app
    from siren_ensemble.serve.settings import ServeSettings

    with TestClient(create_app(ensemble, ServeSettings(max_inputs=3))) as client:
        response = client.post("/v1/rank", json={"prompt": HARMFUL_PROMPT, "candidates": [COMPLIANT, REFUSAL]})
        assert response.status_code == 200, response.text
        body = response.json()
        expected = ensemble.rank(HARMFUL_PROMPT, [COMPLIANT, REFUSAL])
        assert body["method"] == "siren"
        assert [row["index"] for row in body["ranking"]] == expected.order
        assert body["ranking"][0]["members"] == expected.best.members
        for request, message in [
            ({"prompt": "p", "candidates": []}, "candidates: List should have at least 1 item"),
            ({"prompt": "p", "candidates": ["a"] * 4}, "candidates: 4 texts, over the limit of 3"),
            ({"prompt": "p", "candidates": ["a", 1]}, "candidates[1]: Input should be a valid string"),
            ({"prompt": "p", "candidates": ["a"], "method": "srr"}, "method 'srr': no member has a ranker"),
            ({"candidates": ["a"]}, "prompt: Field required"),
        ]:
            answer = client.post("/v1/rank", json=request)
            assert answer.status_code == 400, (request, answer.text)
            assert message in answer.json()["error"]["message"]
