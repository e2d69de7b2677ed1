"""Depth-budget heads: `train --max-layer K` / `--depth-budget F` probe layers <= K only, and the runtime
then never runs the blocks above K."""

import json

import pytest
import torch
from click.testing import CliRunner

from siren_ensemble import Ensemble
from siren_ensemble.cli import cli
from siren_ensemble.data.records import read_dataset
from siren_ensemble.encoding import pad_batch
from siren_ensemble.errors import InputError
from siren_ensemble.extraction import LoadedBackbone, masked_mean
from siren_ensemble.head import SirenHead
from siren_ensemble.members import adapter_for
from siren_ensemble.text import clean_text
from siren_ensemble.training.depth import resolve_depth_cut, select_layers
from siren_ensemble.training.feature_cache import FeatureExtractor
from siren_ensemble.training.pipeline import REPORT_FILE, SUMMARY_FILE, TrainOptions, train_head

from .conftest import DEPTH

MAX_LAYER = 1


@pytest.mark.parametrize("budget,num_layers,max_layer", [
    (0.6, 30, 17),   # the SmolLM2 cut: layers 0-17 of 30
    (0.1, 30, 2),    # 0.1 * 30 is 3.0000000000000004 in floats: still 3 blocks
    (0.3, 24, 7),    # ceil(7.2) = 8 blocks
    (1.0, 4, 3),
    (0.01, 4, 0),    # at least one block
])
def test_depth_budget_keeps_the_first_ceil_share_of_blocks(budget, num_layers, max_layer):
    cut = resolve_depth_cut(num_layers, depth_budget=budget)
    assert (cut.max_layer, cut.blocks_run, cut.num_layers) == (max_layer, max_layer + 1, num_layers)
    assert cut.is_full_depth == (max_layer == num_layers - 1)


@pytest.mark.parametrize("kwargs,message", [
    ({"max_layer": DEPTH}, f"--max-layer: layer {DEPTH} is outside 0-{DEPTH - 1} \\(the backbone has {DEPTH} blocks\\)"),
    ({"max_layer": 99}, "--max-layer: layer 99 is outside"),
    ({"max_layer": -1}, "--max-layer: expected a layer index of 0 or more, got -1"),
    ({"depth_budget": 0.0}, "--depth-budget: expected a share of the backbone's depth in \\(0, 1\\], got 0.0"),
    ({"depth_budget": 1.5}, "--depth-budget: expected a share"),
    ({"max_layer": 1, "depth_budget": 0.5}, "--max-layer and --depth-budget both set the deepest layer; give one of them"),
])
def test_bad_depth_requests_name_the_flag(kwargs, message):
    with pytest.raises(InputError, match=message):
        resolve_depth_cut(DEPTH, **kwargs)


def test_train_options_refuse_both_flags_before_any_work():
    with pytest.raises(InputError, match="--max-layer and --depth-budget"):
        TrainOptions(max_layer=1, depth_budget=0.5)
    with pytest.raises(InputError, match="--depth-budget"):
        TrainOptions(depth_budget=0.0)


def test_layers_above_the_cut_are_an_error_not_dropped():
    cut = resolve_depth_cut(DEPTH, max_layer=1)
    assert select_layers(None, cut) == [0, 1]
    assert select_layers((1, 0, 1), cut) == [0, 1]
    with pytest.raises(InputError, match="--layers: layer 2 is above the depth cut \\(--max-layer 1: layers 0-1\\)"):
        select_layers((0, 2), cut)
    with pytest.raises(InputError, match="--layers: layer 9 is outside 0-3"):
        select_layers((9,), cut)


@pytest.fixture(scope="module")
def cut_head(tiny_models, synthetic_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cut")
    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=root / "cache")
    train_head(extractor, synthetic_data, root / "head", TrainOptions(trials=2, folds=2, max_layer=MAX_LAYER))
    return root / "head"


def test_cut_head_lists_no_layer_above_the_cut_and_records_it(cut_head):
    head = SirenHead.load(cut_head)  # the strict loader
    assert head.config.layers == list(range(MAX_LAYER + 1))
    assert set(head.config.siren_module.layer_weights) == set(range(MAX_LAYER + 1))
    assert {int(key.removeprefix("layer")) for key in head.config.siren_module.selected_neurons_dict} == set(range(MAX_LAYER + 1))
    report = json.loads((cut_head / REPORT_FILE).read_text())
    assert report["depth_cut"] == {"max_layer": MAX_LAYER, "num_layers": DEPTH, "blocks_run": MAX_LAYER + 1,
                                   "share_of_depth": (MAX_LAYER + 1) / DEPTH, "requested": f"--max-layer {MAX_LAYER}"}
    assert report["options"]["max_layer"] == MAX_LAYER and report["options"]["depth_budget"] is None
    assert [entry["layer"] for entry in report["layers"]] == head.config.layers
    assert f"depth cut (--max-layer {MAX_LAYER}): layers 0-{MAX_LAYER} of {DEPTH}" in (cut_head / SUMMARY_FILE).read_text()


def test_training_a_cut_head_extracts_only_the_layers_up_to_the_cut(cut_head):
    from safetensors import safe_open

    shards = list((cut_head.parent / "cache").rglob("by-text/*/*.safetensors"))
    assert shards
    for path in shards:
        with safe_open(str(path), framework="np") as shard:
            assert shard.metadata()["max_layer"] == str(MAX_LAYER)
            assert sorted(shard.keys()) == [f"layer{layer}" for layer in range(MAX_LAYER + 1)]


def test_runtime_runs_only_the_blocks_the_cut_head_reads(cut_head, tiny_models, synthetic_data, write_config, monkeypatch):
    loaded: list[LoadedBackbone] = []
    original_load = LoadedBackbone.load.__func__
    monkeypatch.setattr(LoadedBackbone, "load", classmethod(lambda cls, adapter, weights: loaded.append(original_load(cls, adapter, weights)) or loaded[-1]))
    config = write_config({"members": [{"name": "cut", "backbone": "llama3", "model": str(tiny_models["llama"]), "head": str(cut_head)}]})
    ensemble = Ensemble.from_config(config)
    (backbone,) = loaded
    ran = []
    handles = [block.register_forward_pre_hook(lambda _m, _a, i=i: ran.append(i)) for i, block in enumerate(backbone.blocks)]
    texts = [record.scored_text for record in read_dataset(synthetic_data, "test")[:12]]
    try:
        ours = ensemble.score_batch(texts)
    finally:
        for handle in handles:
            handle.remove()
    assert ran and sorted(set(ran)) == list(range(MAX_LAYER + 1))

    # What the early-exit pass pooled equals the full forward's hidden states for every layer <= K.
    sequences = [item.ids for item in backbone.encode([clean_text(text) for text in texts], 64)]
    wanted = {("residual_mean", layer) for layer in range(MAX_LAYER + 1)}
    early = backbone.pooled_states(sequences, wanted)
    input_ids, mask = pad_batch(sequences, backbone.tokenizer.pad_token_id, backbone.tokenizer.padding_side, "cpu")
    with torch.inference_mode():
        hidden_states = backbone.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for layer in range(MAX_LAYER + 1):
        torch.testing.assert_close(early[("residual_mean", layer)], masked_mean(hidden_states[layer + 1], mask), rtol=0, atol=1e-6)

    # And llm-siren, which runs every block, reads the head and scores it the same.
    siren_guard = pytest.importorskip("siren_guard", reason="llm-siren is a test dependency")
    reference = siren_guard.SirenGuard.from_pretrained(str(cut_head), device="cpu", dtype=torch.float32)
    for mine, theirs in zip(ours, reference.score_batch(texts)):
        assert mine.members["cut"] == pytest.approx(theirs.score, abs=1e-5)


@pytest.mark.parametrize("args,message", [
    (["--max-layer", "-1"], "Invalid value for '--max-layer'"),
    (["--depth-budget", "0"], "Invalid value for '--depth-budget'"),
    (["--max-layer", "1", "--depth-budget", "0.5"], "Error: --max-layer and --depth-budget both set the deepest layer"),
    (["--max-layer", str(DEPTH)], f"Error: --max-layer: layer {DEPTH} is outside 0-{DEPTH - 1}"),
])
def test_cli_depth_flags_fail_with_one_line_naming_the_flag(tiny_models, synthetic_data, tmp_path, args, message):
    result = CliRunner().invoke(cli, ["train", "--backbone", "llama3", "--model", str(tiny_models["llama"]), "--data", str(synthetic_data),
                                      "--out", str(tmp_path / "head"), "--max-length", "64", "--trials", "1", "--folds", "2",
                                      "--cache-dir", str(tmp_path / "cache"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "head").exists()
    assert not (tmp_path / "cache").exists(), "a bad depth flag must fail before any feature is extracted"


def test_cli_depth_budget_trains_a_cut_head(tiny_models, synthetic_data, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--backbone", "llama3", "--model", str(tiny_models["llama"]), "--data", str(synthetic_data),
                                      "--out", str(tmp_path / "head"), "--max-length", "64", "--trials", "1", "--folds", "2",
                                      "--cache-dir", str(tmp_path / "cache"), "--depth-budget", "0.5"])
    assert result.exit_code == 0, result.output
    assert SirenHead.load(tmp_path / "head").config.layers == [0, 1]  # ceil(0.5 * 4) = 2 blocks
    assert "depth cut (--depth-budget 0.5): layers 0-1 of 4" in result.output
