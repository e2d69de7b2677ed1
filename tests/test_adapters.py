"""Every built-in adapter reads the layers llm-siren reads, on tiny random models of each family."""

import pytest
import torch

from siren_ensemble import ArtifactError, ConfigError
from siren_ensemble.backbones import BackboneSpec, HFAdapter, Llama3Adapter, Qwen3Adapter
from siren_ensemble.encoding import pad_batch
from siren_ensemble.extraction import LoadedBackbone, masked_mean
from siren_ensemble.testing import random_head
from siren_ensemble.text import clean_text
from siren_ensemble.weights import resolve_weights

from .conftest import DEPTH, HIDDEN, TEXTS

ADAPTERS = [
    (Llama3Adapter, "llama"),
    (Qwen3Adapter, "qwen3"),
    (Qwen3Adapter, "qwen2"),
    (HFAdapter, "llama"),
    (HFAdapter, "gpt2"),
    (HFAdapter, "bert"),
]


def load(adapter_class, model_dir, **spec) -> LoadedBackbone:
    adapter = adapter_class(BackboneSpec(adapter=adapter_class.name, model=str(model_dir), **spec))
    return LoadedBackbone.load(adapter, resolve_weights(adapter.spec.weights))


def encode(backbone, texts=TEXTS, max_length=64):
    return [item.ids for item in backbone.encode([clean_text(text) for text in texts], max_length)]


@pytest.mark.parametrize("adapter_class,architecture", ADAPTERS)
def test_residual_layers_are_hidden_states_plus_one(tiny_models, adapter_class, architecture):
    backbone = load(adapter_class, tiny_models[architecture])
    assert (backbone.num_layers, backbone.hidden_size) == (DEPTH, HIDDEN)
    sequences = encode(backbone)
    wanted = {("residual_mean", layer) for layer in range(DEPTH)}
    pooled = backbone.pooled_states(sequences, wanted)

    input_ids, mask = pad_batch(sequences, backbone.tokenizer.pad_token_id, backbone.tokenizer.padding_side, "cpu")
    with torch.inference_mode():
        hidden_states = backbone.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(hidden_states) == DEPTH + 1
    for layer in range(DEPTH):
        expected = masked_mean(hidden_states[layer + 1], mask)
        torch.testing.assert_close(pooled[("residual_mean", layer)], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("adapter_class,architecture", [a for a in ADAPTERS if a[1] != "bert"])
def test_mlp_mean_pools_each_blocks_mlp_output(tiny_models, adapter_class, architecture):
    backbone = load(adapter_class, tiny_models[architecture])
    sequences = encode(backbone)
    blocks = backbone.blocks
    captured = {}
    handles = [
        backbone.adapter.mlp(block).register_forward_hook(lambda _m, _a, out, i=i: captured.__setitem__(i, out))
        for i, block in enumerate(blocks)
    ]
    input_ids, mask = pad_batch(sequences, backbone.tokenizer.pad_token_id, backbone.tokenizer.padding_side, "cpu")
    with torch.inference_mode():
        backbone.model(input_ids=input_ids, attention_mask=mask)
    for handle in handles:
        handle.remove()
    pooled = backbone.pooled_states(sequences, {("mlp_mean", layer) for layer in range(DEPTH)})
    for layer in range(DEPTH):
        torch.testing.assert_close(pooled[("mlp_mean", layer)], masked_mean(captured[layer], mask), rtol=0, atol=1e-6)


def test_bert_has_no_mlp_module_and_says_so(tiny_models):
    backbone = load(HFAdapter, tiny_models["bert"])
    with pytest.raises(ArtifactError, match="mlp_mean pooling needs the MLP"):
        backbone.pooled_states(encode(backbone), {("mlp_mean", 0)})


@pytest.mark.parametrize("pooling", ["residual_mean", "mlp_mean"])
def test_early_exit_is_exact_and_skips_deeper_blocks(tiny_models, pooling):
    backbone = load(Llama3Adapter, tiny_models["llama"])
    sequences = encode(backbone)
    wanted = {(pooling, 0), (pooling, 1)}
    ran = []
    handles = [
        block.register_forward_pre_hook(lambda _m, _a, i=i: ran.append(i))
        for i, block in enumerate(backbone.blocks)
    ]
    early = backbone.pooled_states(sequences, wanted, early_exit=True)
    blocks_run_early = sorted(set(ran))
    ran.clear()
    full = backbone.pooled_states(sequences, wanted, early_exit=False)
    for handle in handles:
        handle.remove()
    assert blocks_run_early == [0, 1]
    assert sorted(set(ran)) == list(range(DEPTH))
    for key in wanted:
        torch.testing.assert_close(early[key], full[key], rtol=0, atol=0)
    head = random_head("unused", layers=[0, 1], hidden_size=HIDDEN, pooling=pooling)
    scores_early = head({layer: early[(pooling, layer)] for layer in (0, 1)})
    scores_full = head({layer: full[(pooling, layer)] for layer in (0, 1)})
    assert torch.equal(scores_early, scores_full) and scores_early.unique().numel() > 1


def test_padding_does_not_change_a_texts_pooled_state(tiny_models):
    backbone = load(Qwen3Adapter, tiny_models["qwen3"])
    sequences = encode(backbone)
    wanted = {("residual_mean", 1), ("residual_mean", DEPTH - 1)}
    batched = backbone.pooled_states(sequences, wanted)
    for row, sequence in enumerate(sequences):
        alone = backbone.pooled_states([sequence], wanted)
        for key in wanted:
            torch.testing.assert_close(batched[key][row], alone[key][0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("adapter_class,architecture", [(Llama3Adapter, "qwen3"), (Qwen3Adapter, "llama"), (Llama3Adapter, "gpt2")])
def test_adapter_refuses_other_architectures(tiny_models, adapter_class, architecture):
    adapter = adapter_class(BackboneSpec(adapter=adapter_class.name, model=str(tiny_models[architecture])))
    with pytest.raises(ConfigError, match=f"backbone '{adapter_class.name}' reads model_type"):
        adapter.load_config(resolve_weights(adapter.spec.weights))


def test_adapters_set_padding_side_and_load_without_lm_head(tiny_models):
    backbone = load(Llama3Adapter, tiny_models["llama"])
    assert backbone.tokenizer.padding_side == "right"
    assert not hasattr(backbone.model, "lm_head")
    assert type(backbone.model).__name__ == "LlamaModel"


def test_missing_model_directory_is_a_clear_error(tmp_path):
    adapter = Llama3Adapter(BackboneSpec(adapter="llama3", model=str(tmp_path / "nowhere")))
    with pytest.raises(ArtifactError, match="cannot load the config of .*nowhere"):
        adapter.load_config(resolve_weights(adapter.spec.weights))


def test_dtype_is_applied(tiny_models):
    backbone = load(Llama3Adapter, tiny_models["llama"], dtype="bfloat16")
    assert next(backbone.model.parameters()).dtype == torch.bfloat16
    pooled = backbone.pooled_states(encode(backbone), {("residual_mean", 1)})
    assert pooled[("residual_mean", 1)].dtype == torch.float32
