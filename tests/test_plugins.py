"""The plugin boundary: built-ins and third parties register through the same hooks."""

from pathlib import Path

import numpy as np
import pluggy
import pytest
from click.testing import CliRunner

from siren_ensemble import SirenError, hookspecs, plugins
from siren_ensemble.backbones import Llama3Adapter
from siren_ensemble.cli import cli
from siren_ensemble.combiners import Combiner
from siren_ensemble.errors import UnknownPluginError
from siren_ensemble.hookspecs import hookimpl


class MedianCombiner(Combiner):
    name = "median"
    description = "median of member scores (test plugin)"

    def combine(self, scores):
        return np.median(scores, axis=1)


class FakeLlamaAdapter(Llama3Adapter):
    name = "fake-llama"
    description = "a llama adapter from a test plugin"


class FakePlugin:
    __name__ = "fake_plugin"

    @hookimpl
    def register_backbones(self, register):
        register(FakeLlamaAdapter, aliases=("fl",))

    @hookimpl
    def register_combiners(self, register):
        register(MedianCombiner)


@pytest.fixture
def fake_plugin():
    plugins.load_plugins()
    plugins.pm.register(FakePlugin(), name="fake_plugin")
    yield
    plugins.pm.unregister(name="fake_plugin")


def test_builtins_come_through_the_hooks():
    plugins.load_plugins()
    registered = {plugins.pm.get_name(plugin) for plugin in plugins.pm.get_plugins()}
    assert set(plugins.DEFAULT_PLUGINS) <= registered
    assert plugins.backbones().names() == ["llama3", "qwen3", "hf"]
    assert plugins.combiners().names() == ["mean", "weighted_mean", "logit_mean", "max", "vote", "stacking", "cascade"]
    assert {entry.plugin for entry in plugins.backbones()} == {plugins.BUILTIN_PROVIDER}


def test_fake_plugin_registers_backbone_and_combiner(fake_plugin):
    backbones = plugins.backbones()
    assert backbones.get("fl").cls is FakeLlamaAdapter
    assert backbones.get("fake-llama").plugin == "fake_plugin"
    assert plugins.combiners().get("median").cls is MedianCombiner


def test_unregistered_plugin_is_gone(fake_plugin):
    plugins.pm.unregister(name="fake_plugin")
    assert "fake-llama" not in plugins.backbones()
    plugins.pm.register(FakePlugin(), name="fake_plugin")  # the fixture unregisters it again


def test_cli_lists_and_uses_the_fake_plugin(fake_plugin, tiny_models, write_head, write_config):
    listing = CliRunner().invoke(cli, ["plugins"])
    assert listing.exit_code == 0
    assert "fake-llama (aliases: fl)  [fake_plugin]" in listing.output
    assert "median  [fake_plugin]" in listing.output
    head = write_head(tiny_models["llama"])
    config = write_config({
        "members": [{"name": n, "backbone": "fl", "head": str(head), "threshold": t} for n, t in [("a", 0.5), ("b", 0.4), ("c", 0.3)]],
        "combiner": {"type": "median"},
    })
    result = CliRunner().invoke(cli, ["score", "--config", str(config), "hello"])
    assert result.exit_code == 0, result.output
    assert '"members": {"a":' in result.output


def test_name_clash_names_both_plugins():
    class Clash:
        @hookimpl
        def register_backbones(self, register):
            register(FakeLlamaAdapter, aliases=("llama3",))

    plugins.load_plugins()
    plugins.pm.register(Clash(), name="clash")
    try:
        with pytest.raises(SirenError, match=r"backbone name 'llama3' is registered twice: by plugin 'siren-ensemble \(built-in\)' and by plugin 'clash'"):
            plugins.backbones()
    finally:
        plugins.pm.unregister(name="clash")


def test_misspelled_hook_is_rejected():
    manager = pluggy.PluginManager("siren_ensemble")
    manager.add_hookspecs(hookspecs)

    class Typo:
        @hookimpl
        def register_backbone(self, register):  # missing "s"
            pass

    manager.register(Typo())
    with pytest.raises(pluggy.PluginValidationError):
        manager.check_pending()


def test_hook_implementations_may_take_fewer_arguments():
    class NoArguments:
        @hookimpl
        def register_combiners(self):
            self.called = True

    plugin = NoArguments()
    plugins.load_plugins()
    plugins.pm.register(plugin, name="no_arguments")
    try:
        plugins.combiners()
        assert plugin.called
    finally:
        plugins.pm.unregister(name="no_arguments")


def test_unknown_name_answers_did_you_mean():
    with pytest.raises(UnknownPluginError, match=r"Unknown combiner 'maks'. Did you mean: max, mean\? Available: cascade, logit_mean, max, mean, stacking, vote, weighted_mean."):
        plugins.combiners().get("maks")
    with pytest.raises(UnknownPluginError, match=r"Unknown backbone 'qwen2.5'. Did you mean: qwen3\?"):
        plugins.backbones().get("qwen2.5")


def test_every_hook_is_documented():
    documentation = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    for hook in plugins.pm.hook.__dict__:
        if hook.startswith("register_"):
            assert f"## `{hook}(register)`" in documentation, f"docs/plugins.md has no section for {hook}"


def test_installed_plugins_do_not_load_in_tests():
    """conftest's autouse fixture: entry points installed in the environment stay out of the suite."""
    import os

    plugins.load_plugins()
    assert os.environ[plugins.LOAD_PLUGINS_ENV] == ""
    assert plugins.pm.list_plugin_distinfo() == []
    assert {entry.plugin for entry in plugins.backbones()} | {entry.plugin for entry in plugins.combiners()} == {
        plugins.BUILTIN_PROVIDER}
