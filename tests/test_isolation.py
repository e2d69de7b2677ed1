"""One text that cannot be cleaned or tokenised is answered on its own; the texts beside it keep their scores."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from click.testing import CliRunner

from siren_ensemble import Ensemble, InputError
from siren_ensemble.cli import cli
from siren_ensemble.config import EnsembleConfig

from .test_serve import service

POISON = "bad \ud800 text"  # a lone surrogate: no UTF-8 form, so no tokenizer can encode it
GOOD = ["How do I bake bread?", "Write a poem about the sea.", "x"]


@pytest.fixture(scope="module")
def head(tiny_models, tmp_path_factory):
    from siren_ensemble.testing import random_head

    from .conftest import HIDDEN

    return random_head(str(tiny_models["llama"]), layers=[0, 2], hidden_size=HIDDEN, max_length=32).save(
        tmp_path_factory.mktemp("isolation") / "head")


def make(head, **options) -> Ensemble:
    return Ensemble.from_config(EnsembleConfig.from_dict({"members": [
        {"name": "a", "backbone": "llama3", "head": str(head)},
        {"name": "b", "backbone": "llama3", "head": str(head), "threshold": 0.3},
    ], **options}))


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
def test_a_poisoned_text_fails_alone_and_the_others_keep_their_scores(head, policy):
    ensemble = make(head, on_member_error=policy)
    alone = [ensemble.score(text) for text in GOOD]
    results = ensemble.score_batch([GOOD[0], POISON, GOOD[1], GOOD[2]])
    for result, want in zip([results[0], *results[2:]], alone):
        assert result.score == pytest.approx(want.score, abs=1e-6)
        assert result.errors == {}
    poisoned = results[1]
    assert set(poisoned.errors) == {"a", "b"}
    assert "lone surrogate U+D800 at character 4" in poisoned.errors["a"]
    assert poisoned.members == {"a": None, "b": None}
    if policy == "fail_closed":
        assert poisoned.is_harmful and poisoned.score == 1.0
    else:  # both members count as benign: the mean of two zeros
        assert not poisoned.is_harmful and poisoned.score == 0.0


def test_raise_policy_names_the_text(head):
    ensemble = make(head, on_member_error="raise")
    with pytest.raises(InputError, match=r"texts\[1\]: .*lone surrogate"):
        ensemble.score_batch([GOOD[0], POISON])


def test_a_tokenizer_error_on_one_text_fails_that_text_only(head, monkeypatch):
    ensemble = make(head)
    alone = [ensemble.score(text).score for text in GOOD]
    tokenizer = ensemble._passes[0].backbone.tokenizer
    original = type(tokenizer).__call__

    def picky(self, texts, *args, **kwargs):
        if "boom" in (texts if isinstance(texts, list) else [texts]):
            raise RuntimeError("tokenizer exploded")
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", picky)
    results = ensemble.score_batch([GOOD[0], "boom", GOOD[1], GOOD[2]])
    assert [r.score for r in [results[0], *results[2:]]] == pytest.approx(alone, abs=1e-6)
    assert results[1].is_harmful and "tokenisation failed: RuntimeError: tokenizer exploded" in results[1].errors["a"]


def test_a_stream_fed_a_lone_surrogate_fails_closed(head):
    ensemble = make(head)
    with ensemble.stream(prompt="Tell me") as stream:
        result = stream.feed(" \ud800")
    assert result.is_harmful and result.score == 1.0 and set(result.errors) == {"a", "b"}


@pytest.mark.parametrize("policy, flagged", [("fail_closed", True), ("fail_open", False)])
def test_the_micro_batcher_answers_a_poisoned_request_alone(head, policy, flagged):
    ensemble = make(head, on_member_error=policy)
    alone = {text: ensemble.score(text).score for text in GOOD}
    batches = []
    score_batch = ensemble.score_batch

    def recording(texts, *args, **kwargs):
        batches.append(list(texts))
        return score_batch(texts, *args, **kwargs)

    ensemble.score_batch = recording
    bodies = [json.dumps({"input": text}) for text in [GOOD[0], POISON, GOOD[1], GOOD[2]]]  # ASCII-escaped: "\ud800"
    assert "\\ud800" in bodies[1]
    with service(ensemble, batch_wait_ms=300, max_inputs=8) as url:
        def post(body):
            return httpx.post(f"{url}/v1/moderations", content=body, headers={"content-type": "application/json"})

        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(post, bodies))
    assert [response.status_code for response in responses] == [200] * 4, [r.text for r in responses]
    answers = [response.json()["results"][0] for response in responses]
    assert any(POISON in batch and len(batch) > 1 for batch in batches)  # it really shared a batch
    for answer, text in zip([answers[0], *answers[2:]], GOOD):
        assert answer["siren"]["score"] == pytest.approx(alone[text], abs=1e-6)
        assert answer["siren"]["errors"] == {}
    assert answers[1]["flagged"] is flagged and set(answers[1]["siren"]["errors"]) == {"a", "b"}


@pytest.mark.parametrize("output_format", ["jsonl", "table"])
def test_cli_prints_a_row_with_the_error_for_a_poisoned_line(head, tmp_path, output_format):
    config = tmp_path / "ensemble.yaml"
    config.write_text(json.dumps({"members": [{"name": "a", "backbone": "llama3", "head": str(head)}]}))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(json.dumps({"id": index, "text": text}) for index, text in enumerate([GOOD[0], POISON, GOOD[1]])) + "\n")
    result = CliRunner().invoke(cli, ["score", "--config", str(config), "--input", str(inputs), "--format", output_format])
    assert result.exit_code == 0, result.output
    assert result.exception is None
    if output_format == "table":
        assert "\\ud800" in result.stdout and "failed" in result.stdout.splitlines()[2]
        return
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["id"] for row in rows] == [0, 1, 2]
    assert rows[1]["is_harmful"] is True and "lone surrogate" in rows[1]["errors"]["a"]
    alone = Ensemble.from_config(config)
    assert rows[2]["score"] == pytest.approx(alone.score(GOOD[1]).score, abs=1e-6)
    assert "errors" not in rows[0] and "errors" not in rows[2]
