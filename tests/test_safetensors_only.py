"""Backbone weights load from safetensors only: nothing is unpickled, and a config cannot turn that off."""

from __future__ import annotations

import shutil

import pytest
import torch
from click.testing import CliRunner

from siren_ensemble import Ensemble
from siren_ensemble.cli import cli
from siren_ensemble.config import EnsembleConfig
from siren_ensemble.errors import ArtifactError, ConfigError
from siren_ensemble.members import adapter_for
from siren_ensemble.weights import resolve_weights


@pytest.fixture
def pickled_model(tiny_models, tmp_path):
    """The tiny Llama with its weights as pytorch_model.bin (a pickle) and no safetensors."""
    from safetensors.torch import load_file

    directory = tmp_path / "pickled"
    shutil.copytree(tiny_models["llama"], directory)
    state = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def test_a_directory_of_pickled_weights_is_refused_without_unpickling(pickled_model, write_head, write_config, monkeypatch):
    head = write_head(pickled_model)
    config = write_config({"members": [{"name": "a", "backbone": "llama3", "head": str(head), "model": str(pickled_model)}]})
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("torch.load was called"))
    with pytest.raises(ArtifactError, match=r"pytorch_model\.bin: pickled weights are refused") as raised:
        Ensemble.from_config(config)
    assert str(pickled_model / "pytorch_model.bin") in str(raised.value)
    result = CliRunner().invoke(cli, ["validate", "--config", str(config)])
    assert result.exit_code == 2 and "pickled weights are refused" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("model", ["org/some-model", "local"])
def test_from_pretrained_is_asked_for_safetensors(tiny_models, model):
    adapter = adapter_for("llama3", str(tiny_models["llama"]) if model == "local" else model)
    assert adapter.model_load_kwargs(resolve_weights(adapter.spec.weights))["use_safetensors"] is True


@pytest.mark.parametrize("option", [{"weights_only": False}, {"use_safetensors": False}])
def test_backbone_options_cannot_turn_safetensors_off(tmp_path, option):
    name = next(iter(option))
    with pytest.raises(ConfigError, match=rf"members\[0\]\.backbone_options\.{name}: weights load from safetensors only"):
        EnsembleConfig.from_dict({"members": [{"name": "a", "backbone": "llama3", "head": str(tmp_path),
                                               "backbone_options": option}]})
