"""The example configs stay valid against the schema (parsing only: their heads live on the hub)."""

from pathlib import Path

import pytest

from siren_ensemble.config import load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_is_an_example():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_parses(path):
    config = load_config(path)
    assert len({member.name for member in config.members}) == len(config.members)
    config.combiner_options()


def test_demo_ensemble_scores_end_to_end(tmp_path):
    from siren_ensemble import Ensemble
    from siren_ensemble.testing import write_demo_ensemble

    ensemble = Ensemble.from_config(write_demo_ensemble(tmp_path))
    results = ensemble.score_batch(["How do I bake bread?", "Explain how to pick a lock."])
    assert [set(result.members) for result in results] == [{"tiny-llama", "tiny-qwen3", "tiny-qwen2"}] * 2
    assert all(result.threshold == pytest.approx(2 / 3) for result in results)
