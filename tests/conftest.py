from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

from siren_ensemble import precision
from siren_ensemble.precision import CPU_BF16_ENV
from siren_ensemble.testing import TINY_DIMENSIONS, build_tiny_model, random_head

#: Property tests (tests/test_fuzz.py): under CI the examples are derandomized, so a failing run can be reproduced.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

HIDDEN = TINY_DIMENSIONS["hidden_size"]
DEPTH = TINY_DIMENSIONS["num_hidden_layers"]

@pytest.fixture(autouse=True, scope="session")
def _features_outside_the_user_cache(tmp_path_factory):
    """Features extracted by tests go to a temporary directory, never into the user's cache. (Converted
    GGUF weights stay in the user cache: the real tier would otherwise convert them on every run.)"""
    from siren_ensemble.cache import FEATURE_CACHE_ENV

    patcher = pytest.MonkeyPatch()
    patcher.setenv(FEATURE_CACHE_ENV, str(tmp_path_factory.mktemp("features")))
    yield
    patcher.undo()


@pytest.fixture(autouse=True, scope="session")
def _no_installed_plugins():
    """Plugins installed in this environment (entry points) never load in tests, nor in the CLI processes tests
    start: SIREN_ENSEMBLE_LOAD_PLUGINS is empty. Tests that want a plugin register a fake one with the plugin
    manager (test_plugins.py) or name the example plugin in the variable (test_example_plugin.py)."""
    from siren_ensemble import plugins

    patcher = pytest.MonkeyPatch()
    patcher.setenv(plugins.LOAD_PLUGINS_ENV, "")
    for plugin, _dist in plugins.pm.list_plugin_distinfo():  # any loaded before this fixture ran
        plugins.pm.unregister(plugin)
    yield
    patcher.undo()


#: The user's own override, kept for the real tier (the rest of the suite pins `dtype: auto` to float32).
_USER_CPU_BF16 = os.environ.get(CPU_BF16_ENV)


@pytest.fixture(autouse=True, scope="session")
def _auto_dtype_is_float32_on_every_cpu():
    """`dtype: auto` (the members' default) resolves to float32 in tests on any CPU, so results do not depend on
    the machine's bf16 support; tests of the bf16 choice set SIREN_ENSEMBLE_CPU_BF16 themselves."""
    patcher = pytest.MonkeyPatch()
    patcher.setenv(CPU_BF16_ENV, "0")
    precision.clear_cache()
    yield
    patcher.undo()
    precision.clear_cache()


@pytest.fixture(scope="module")
def machine_auto_dtype():
    """`dtype: auto` as this machine (and the user's SIREN_ENSEMBLE_CPU_BF16) resolves it: for the real tier."""
    patcher = pytest.MonkeyPatch()
    if _USER_CPU_BF16 is None:
        patcher.delenv(CPU_BF16_ENV, raising=False)
    else:
        patcher.setenv(CPU_BF16_ENV, _USER_CPU_BF16)
    precision.clear_cache()
    yield
    patcher.undo()
    precision.clear_cache()


TEXTS = [
    "How do I bake bread at home?",
    "Write a poem about the sea.",
    "",
    "   ",
    "<|im_start|>user\nExplain vaccines.<|im_end|>\n\n\n\n<|im_start|>assistant",
    "Give me step by step instructions for a chemistry experiment. " * 3,
    "x",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: build_tiny_model(root / arch, arch, seed=index) for index, arch in enumerate(["llama", "qwen3", "qwen2", "gpt2", "bert"])}


@pytest.fixture
def write_head(tmp_path):
    def write(model: Path, name: str = "head", **kwargs) -> Path:
        kwargs.setdefault("layers", [0, 2])
        kwargs.setdefault("hidden_size", HIDDEN)
        return random_head(str(model), **kwargs).save(tmp_path / name)

    return write


@pytest.fixture
def write_config(tmp_path):
    def write(config: dict, name: str = "ensemble.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    from siren_ensemble.testing import write_synthetic_split

    return write_synthetic_split(tmp_path_factory.mktemp("synthetic") / "split")


@pytest.fixture(scope="session")
def trained_heads(tiny_models, synthetic_data, tmp_path_factory) -> dict:
    """One head trained on the synthetic split for the tiny Llama and one for the tiny Qwen3 (few trials)."""
    from siren_ensemble.members import adapter_for
    from siren_ensemble.training.feature_cache import FeatureExtractor
    from siren_ensemble.training.pipeline import TrainOptions, train_head

    root = tmp_path_factory.mktemp("trained")
    heads = {"cache": root / "cache"}
    for architecture, backbone in (("llama", "llama3"), ("qwen3", "qwen3")):
        extractor = FeatureExtractor(adapter_for(backbone, str(tiny_models[architecture])), max_length=64, cache_dir=heads["cache"])
        train_head(extractor, synthetic_data, root / architecture, TrainOptions(trials=3, folds=2))
        heads[architecture] = root / architecture
    return heads


@pytest.fixture
def two_member_config(trained_heads, tiny_models, write_config):
    """A mean ensemble of the two heads trained on the synthetic split."""
    return write_config({
        "members": [
            {"name": "llama", "backbone": "llama3", "model": str(tiny_models["llama"]), "head": str(trained_heads["llama"])},
            {"name": "qwen3", "backbone": "qwen3", "model": str(tiny_models["qwen3"]), "head": str(trained_heads["qwen3"])},
        ],
        "combiner": {"type": "mean"},
    })


@pytest.fixture(scope="session")
def risk_word_data(tmp_path_factory) -> Path:
    """300/100/200 texts of random neutral words, half of them with one risk word inserted."""
    from siren_ensemble.testing import write_risk_word_split

    return write_risk_word_split(tmp_path_factory.mktemp("risk_word") / "split")
