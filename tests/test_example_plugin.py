"""The example plugin in plugins/ installs as its own distribution; the CLI then lists and uses it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from siren_ensemble import Ensemble

PLUGIN = Path(__file__).parents[1] / "plugins" / "siren-ensemble-gpt2"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(PLUGIN)],
        check=True, capture_output=True,
    )
    assert list(target.glob("siren_ensemble_gpt2-0.1.0.dist-info"))
    return target


def cli(site, *args, **env):
    # The suite keeps installed plugins out (conftest); these tests load the example plugin, and only it.
    environment = {**os.environ, "PYTHONPATH": str(site), "SIREN_ENSEMBLE_LOAD_PLUGINS": "siren-ensemble-gpt2", **env}
    environment = {name: value for name, value in environment.items() if value is not None}  # None: unset
    return subprocess.run([sys.executable, "-m", "siren_ensemble", *map(str, args)], capture_output=True, text=True, env=environment)


@pytest.mark.parametrize("load", ["siren-ensemble-gpt2", None], ids=["named", "variable unset: every installed plugin"])
def test_installed_plugin_is_listed_with_its_distribution(installed_plugin, load):
    result = cli(installed_plugin, "plugins", "--json", SIREN_ENSEMBLE_LOAD_PLUGINS=load)
    assert result.returncode == 0, result.stderr
    backbones = {entry["name"]: entry for entry in json.loads(result.stdout)["backbones"]}
    assert backbones["gpt2"]["plugin"] == "siren-ensemble-gpt2 0.1.0"


def test_load_plugins_variable_can_switch_it_off(installed_plugin):
    result = cli(installed_plugin, "plugins", "--json", SIREN_ENSEMBLE_LOAD_PLUGINS="")
    assert "gpt2" not in {entry["name"] for entry in json.loads(result.stdout)["backbones"]}
    result = cli(installed_plugin, "plugins", "--json", SIREN_ENSEMBLE_LOAD_PLUGINS="siren-ensemble-gpt2")
    assert "gpt2" in {entry["name"] for entry in json.loads(result.stdout)["backbones"]}


def test_cli_scores_with_the_plugin_backbone(installed_plugin, tiny_models, write_head, write_config):
    head = write_head(tiny_models["gpt2"], layers=[1, 3], pooling="mlp_mean")
    config = write_config({"members": [{"name": "g", "backbone": "gpt2", "head": str(head)}]})
    result = cli(installed_plugin, "score", "--config", config, "hello there", "How do I bake bread?")
    assert result.returncode == 0, result.stderr
    scores = [json.loads(line)["score"] for line in result.stdout.splitlines()]
    # the same model and head through the generic adapter give the same scores
    generic = write_config({"members": [{"name": "g", "backbone": "hf", "head": str(head)}]}, name="generic.yaml")
    expected = [r.score for r in Ensemble.from_config(generic).score_batch(["hello there", "How do I bake bread?"])]
    assert scores == pytest.approx(expected, abs=1e-6)


def test_unknown_backbone_without_the_plugin(tiny_models, write_head, write_config):
    head = write_head(tiny_models["gpt2"])
    config = write_config({"members": [{"name": "g", "backbone": "gpt2", "head": str(head)}]})
    result = cli(Path("/nonexistent"), "score", "--config", config, "x", SIREN_ENSEMBLE_LOAD_PLUGINS="")
    assert result.returncode == 2
    assert "members[0].backbone: Unknown backbone 'gpt2'." in result.stderr and "Traceback" not in result.stderr
