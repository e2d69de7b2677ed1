"""The llm-siren artifact: round trip, strict loading, and load-time errors that name file and field."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from siren_ensemble import ArtifactError, SirenHead
from siren_ensemble.head import CONFIG_FILE, WEIGHTS_FILE
from siren_ensemble.testing import random_head

from .conftest import DEPTH, HIDDEN


@pytest.fixture
def head_dir(tmp_path):
    return random_head("some/model", layers=[0, 2], hidden_size=HIDDEN, neurons_per_layer=5).save(tmp_path / "head")


def edit_config(head_dir, change):
    path = head_dir / CONFIG_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_round_trip_keeps_config_and_weights(head_dir):
    head = SirenHead.load(head_dir)
    again = SirenHead.load(head.save(head_dir.parent / "copy"))
    assert again.config == head.config
    for key, value in head.mlp.state_dict().items():
        torch.testing.assert_close(again.mlp.state_dict()[key], value, rtol=0, atol=0)
    written = json.loads((head_dir / CONFIG_FILE).read_text())
    assert set(written) == {"task", "base_model", "siren_module", "mlp", "inference"}
    assert set(written["siren_module"]["selected_neurons_dict"]) == {"layer0", "layer2"}
    assert set(written["siren_module"]["layer_weights"]) == {"0", "2"}
    # dropout 0.1 then 0.0: the module tree (and so the key names) follows llm-siren's classifier
    assert sorted(load_file(str(head_dir / WEIGHTS_FILE))) == sorted(
        ["network.0.weight", "network.0.bias", "network.3.weight", "network.3.bias", "network.5.weight", "network.5.bias"]
    )


def test_unknown_fields_are_kept(head_dir):
    edit_config(head_dir, lambda d: d.update(training={"eta": 0.9}))
    head = SirenHead.load(head_dir)
    assert head.config.to_json_dict()["training"] == {"eta": 0.9}


def test_features_follow_ascending_layer_order_and_weights(head_dir):
    head = SirenHead.load(head_dir)
    pooled = {0: torch.arange(HIDDEN, dtype=torch.float32)[None], 2: -torch.arange(HIDDEN, dtype=torch.float32)[None]}
    features = head.features(pooled)[0]
    neurons = head.config.neurons()
    expected = [i * head.config.layer_weight(0) for i in neurons[0]] + [-i * head.config.layer_weight(2) for i in neurons[2]]
    torch.testing.assert_close(features, torch.tensor(expected))


@pytest.mark.parametrize("change,field", [
    (lambda d: d["mlp"].update(input_dim=11), "mlp.input_dim: is 11 but the selected neurons add up to 10"),
    (lambda d: d["siren_module"]["selected_neurons_dict"].pop("layer2"), "siren_module.selected_neurons_dict: no 'layer2' entry"),
    (lambda d: d["siren_module"]["selected_neurons_dict"].update(bad=[1]), "key 'bad' is not of the form"),
    (lambda d: d["siren_module"].update(pooling_type="max"), "siren_module.pooling_type"),
    (lambda d: d.pop("inference"), "inference: Field required"),
    (lambda d: d["inference"].update(default_threshold=1.5), "inference.default_threshold"),
    (lambda d: d.update(task="trajectory"), "task: 'trajectory' artifacts score agent trajectories"),
    (lambda d: d["mlp"].update(num_classes=3), "mlp.num_classes"),
    (lambda d: d["mlp"].update(dropout_rates=[0.1]), "mlp.dropout_rates: has 1 entries for 2 layer_dims"),
])
def test_config_errors_name_file_and_field(head_dir, change, field):
    edit_config(head_dir, change)
    with pytest.raises(ArtifactError) as raised:
        SirenHead.load(head_dir)
    assert str(raised.value).startswith(str(head_dir / CONFIG_FILE))
    assert field in str(raised.value)


def test_missing_files(tmp_path, head_dir):
    with pytest.raises(ArtifactError, match=f"{CONFIG_FILE}: missing"):
        SirenHead.load(tmp_path)
    (head_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(ArtifactError, match=f"{WEIGHTS_FILE}: missing"):
        SirenHead.load(head_dir)


def test_invalid_json(head_dir):
    (head_dir / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        SirenHead.load(head_dir)


def test_weights_must_match_config_strictly(head_dir):
    path = head_dir / WEIGHTS_FILE
    state = load_file(str(path))
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(ArtifactError, match=r"unexpected: \['extra.weight'\]"):
        SirenHead.load(head_dir)
    del state["extra.weight"]
    state["network.0.weight"] = torch.zeros(16, 3)
    save_file(state, str(path))
    with pytest.raises(ArtifactError, match=r"network.0.weight has shape \(16, 3\)"):
        SirenHead.load(head_dir)
    path.write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        SirenHead.load(head_dir)


def test_neuron_keys_may_carry_a_suffix_as_in_llm_siren(head_dir):
    def rename(d):
        neurons = d["siren_module"]["selected_neurons_dict"]
        neurons["layer2_residual"] = neurons.pop("layer2")
        neurons["layer2_residual"][0] = HIDDEN + 5

    edit_config(head_dir, rename)
    head = SirenHead.load(head_dir)
    assert sorted(head.config.neurons()) == [0, 2]
    with pytest.raises(ArtifactError, match=r"selected_neurons_dict.layer2_residual: neuron 69 is beyond"):
        head.check_backbone(num_layers=DEPTH, hidden_size=HIDDEN)


def test_negative_and_empty_neuron_lists(head_dir):
    edit_config(head_dir, lambda d: d["siren_module"]["selected_neurons_dict"]["layer0"].__setitem__(0, -1))
    with pytest.raises(ArtifactError, match="selected_neurons_dict.layer0: negative neuron index -1"):
        SirenHead.load(head_dir)


def test_backbone_mismatches_are_caught(head_dir):
    head = SirenHead.load(head_dir)
    head.check_backbone(num_layers=DEPTH, hidden_size=HIDDEN)
    with pytest.raises(ArtifactError, match="siren_module.selected_layers: layer 2 is beyond the backbone's depth"):
        head.check_backbone(num_layers=2, hidden_size=HIDDEN)
    with pytest.raises(ArtifactError, match=r"selected_neurons_dict.layer\d: neuron \d+ is beyond the backbone's hidden size 4"):
        head.check_backbone(num_layers=DEPTH, hidden_size=4)
