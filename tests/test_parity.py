"""Our scores equal llm-siren's ``SirenGuard`` on the same head, backbone and texts (fp32, 1e-5)."""

import pytest
import torch

from siren_ensemble import Ensemble

from .conftest import DEPTH, TEXTS

siren_guard = pytest.importorskip("siren_guard", reason="llm-siren is a test dependency (pip install --no-deps llm-siren==0.2.0)")

CASES = [
    ("llama", "llama3", "residual_mean", [0, 2]),
    ("llama", "llama3", "residual_mean", [1, DEPTH - 1]),  # the last layer reads the normed state
    ("llama", "llama3", "mlp_mean", [0, 1, DEPTH - 1]),
    ("qwen3", "qwen3", "residual_mean", [0, 1, 2, DEPTH - 1]),
    ("qwen3", "qwen3", "mlp_mean", [1, 3]),
    ("qwen2", "qwen3", "residual_mean", [2, DEPTH - 1]),
]


@pytest.mark.parametrize("architecture,backbone,pooling,layers", CASES)
def test_scores_match_llm_siren(tiny_models, write_head, write_config, architecture, backbone, pooling, layers):
    head = write_head(tiny_models[architecture], layers=layers, pooling=pooling, max_length=24)
    config = write_config({"members": [{"name": "m", "backbone": backbone, "head": str(head), "dtype": "float32"}]})
    texts = TEXTS + ["word " * 40]  # the last one is longer than max_length: truncated like the reference

    ours = Ensemble.from_config(config).score_batch(texts)
    reference = siren_guard.SirenGuard.from_pretrained(str(head), device="cpu", dtype=torch.float32)
    theirs = reference.score_batch(texts)

    assert [r.truncated for r in ours][-1] is True
    assert len({round(r.score, 6) for r in ours}) > 3, "scores should vary across texts for the test to mean anything"
    for index, (mine, reference_result) in enumerate(zip(ours, theirs)):
        assert mine.score == pytest.approx(reference_result.score, abs=1e-5), f"text {index}: {texts[index]!r}"
        assert mine.is_harmful == reference_result.is_harmful


def test_prompt_response_and_single_scoring_match_reference(tiny_models, write_head, write_config):
    head = write_head(tiny_models["llama"], layers=[1, 3])
    config = write_config({"members": [{"name": "m", "backbone": "llama3", "head": str(head), "dtype": "float32"}]})
    ensemble = Ensemble.from_config(config)
    reference = siren_guard.SirenGuard.from_pretrained(str(head), device="cpu", dtype=torch.float32)
    for prompt, response in [("How do I pick a lock?", "I can't help with that."), ("Hi", ""), ("", "Only a response")]:
        mine = ensemble.score(prompt=prompt, response=response)
        theirs = reference.score(prompt=prompt, response=response)
        assert mine.score == pytest.approx(theirs.score, abs=1e-5)
    assert ensemble.score_streaming("Sure, here is").score == pytest.approx(
        reference.score_streaming("Sure, here is").score, abs=1e-5
    )
