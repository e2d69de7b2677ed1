"""Category heads: training beside an existing head from cached features, strict save/load, combination across
members, the fields results gain (and keep away from results without them), thresholds in the config, the
service's moderation categories and `calibrate --per-category`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from siren_ensemble import Ensemble
from siren_ensemble.ensemble import EnsembleResult
from siren_ensemble.category_head import CONFIG_FILE, WEIGHTS_FILE, CategoryHead
from siren_ensemble.category_scores import CategoryCombination
from siren_ensemble.cli import cli
from siren_ensemble.config import EnsembleConfig
from siren_ensemble.errors import ArtifactError, ConfigError, InputError
from siren_ensemble.head import SirenHead
from siren_ensemble.members import adapter_for
from siren_ensemble.serve.schemas import OPENAI_CATEGORIES, moderation_result
from siren_ensemble.testing import random_category_head, random_head
from siren_ensemble.training.categories import CATEGORY_REPORT_FILE, train_category_head
from siren_ensemble.training.feature_cache import FeatureExtractor

from .conftest import HIDDEN


@pytest.fixture
def head_with_categories(tiny_models, tmp_path):
    """A random head on the tiny Llama with a random category head beside it."""
    head = random_head(str(tiny_models["llama"]), layers=[0, 2], hidden_size=HIDDEN, seed=1)
    directory = head.save(tmp_path / "head")
    random_category_head(head, seed=1).save(directory)
    return directory


def config_of(*heads, **extra) -> EnsembleConfig:
    members = [{"name": f"m{index}", "backbone": "llama3", "head": str(head)} for index, head in enumerate(heads)]
    return EnsembleConfig.from_dict({"members": members, **extra})


# ---- training --------------------------------------------------------------------------------------------


def test_train_categories_beside_a_trained_head_reads_the_cached_features_only(trained_heads, synthetic_data, tiny_models,
                                                                                tmp_path):
    head_dir = shutil.copytree(trained_heads["llama"], tmp_path / "head")
    before = {name: (head_dir / name).read_bytes() for name in ("siren_config.json", "siren.safetensors")}
    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=trained_heads["cache"])
    report = train_category_head(extractor, synthetic_data, head_dir, cached_only=True)
    assert {name: (head_dir / name).read_bytes() for name in before} == before  # the SIREN head is untouched
    assert (head_dir / CATEGORY_REPORT_FILE).is_file()
    head = CategoryHead.load(head_dir)
    assert set(head.categories) == {"violence", "weapons", "cyber", "fraud", "other_crime", "privacy"}
    assert report["validation_macro_f1"] > 0.5
    head.check_head(SirenHead.load(head_dir).config, str(head_dir))

    cold = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=tmp_path / "empty")
    with pytest.raises(InputError, match="no cached features"):
        train_category_head(cold, synthetic_data, head_dir, cached_only=True)


def test_cli_train_categories_for_a_config_member_and_train_with_categories(trained_heads, synthetic_data, tiny_models,
                                                                           write_config, tmp_path):
    head_dir = shutil.copytree(trained_heads["qwen3"], tmp_path / "qwen-head")
    config = write_config({"members": [{"name": "q", "backbone": "qwen3", "model": str(tiny_models["qwen3"]),
                                        "head": str(head_dir), "dtype": "float32"}]})
    result = CliRunner().invoke(cli, ["train-categories", "--config", str(config), "--member", "q", "--data", str(synthetic_data),
                                      "--cached-only", "--cache-dir", str(trained_heads["cache"])])
    assert result.exit_code == 0, result.output
    assert "category head:" in result.output and (head_dir / CONFIG_FILE).is_file()
    result = CliRunner().invoke(cli, ["train-categories", "--config", str(config), "--member", "nope", "--data", str(synthetic_data)])
    assert result.exit_code == 2 and "has no member 'nope'" in result.output

    out = tmp_path / "trained"
    result = CliRunner().invoke(cli, ["train", "--backbone", "llama3", "--model", str(tiny_models["llama"]), "--data",
                                      str(synthetic_data), "--out", str(out), "--trials", "2", "--folds", "2", "--max-length",
                                      "64", "--categories", "--cache-dir", str(trained_heads["cache"])])
    assert result.exit_code == 0, result.output
    assert (out / "siren_config.json").is_file() and (out / CONFIG_FILE).is_file() and (out / WEIGHTS_FILE).is_file()


# ---- the artifact ----------------------------------------------------------------------------------------


def test_category_head_round_trips(head_with_categories):
    loaded = CategoryHead.load(head_with_categories)
    original = random_category_head(SirenHead.load(head_with_categories), seed=1)
    features = torch.randn(3, loaded.config.input_dim)
    assert torch.allclose(loaded(features), original(features))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / WEIGHTS_FILE).unlink(), "categories.safetensors: missing"),
    (lambda d: _edit_config(d, unknown=1), "categories.json: unknown: unknown field"),
    (lambda d: _edit_config(d, categories=["violence", "weapon", "cyber", "fraud"]), "Did you mean: weapons"),
    (lambda d: _edit_config(d, hidden_dims=[9]), "tensors do not match|has shape"),
    (lambda d: _edit_weights(d, drop="network.0.bias"), r"missing: \['network.0.bias'\]"),
    (lambda d: _edit_weights(d, add="extra"), r"unexpected: \['extra'\]"),
    (lambda d: (d / CONFIG_FILE).write_text("{"), "categories.json: not valid JSON"),
])
def test_category_head_loads_strictly_and_names_the_file(head_with_categories, damage, message):
    damage(head_with_categories)
    with pytest.raises(ArtifactError, match=message):
        CategoryHead.load(head_with_categories)


def test_a_category_head_of_other_features_is_refused_at_plan_time(head_with_categories, tiny_models, tmp_path):
    other = random_head(str(tiny_models["llama"]), layers=[0, 2], hidden_size=HIDDEN, seed=7)
    random_category_head(other).save(head_with_categories)  # same width, other neurons
    with pytest.raises(ArtifactError, match=r"members\[0\]\.head: .*features_digest: trained on another SIREN head"):
        Ensemble.from_config(config_of(head_with_categories))


def _edit_config(directory, **changes):
    path = directory / CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _edit_weights(directory, drop=None, add=None):
    path = directory / WEIGHTS_FILE
    state = load_file(str(path))
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(1)
    save_file(state, str(path))


# ---- combination and results -----------------------------------------------------------------------------


@pytest.mark.parametrize("rule, expected", [("mean", [0.5, 0.3]), ("max", [0.8, 0.3]), ("weighted_mean", [0.35, 0.3]),
                                            ("logit_mean", [None, 0.3])])
def test_combination_pools_the_members_that_scored_each_category(rule, expected):
    combination = CategoryCombination(("violence", "cyber"), ((0, 1), (0,)), rule, np.array([1.0, 3.0]),
                                      {"violence": 0.5, "cyber": 0.5})
    store = combination.empty(2)
    combination.record(store, [0], 0, np.array([[0.8, 0.3]]))
    combination.record(store, [0], 1, np.array([[0.2]]))
    combined = combination.combine(store)
    if rule == "logit_mean":
        expected[0] = 1 / (1 + np.exp(-(np.log(4) * 1 + np.log(0.25) * 3) / 4))
    assert combined[0] == pytest.approx(expected)
    assert np.isnan(combined[1]).all()  # nobody scored the second text
    verdicts = combination.verdicts(store, np.array([False, False]))
    assert verdicts[1].scores is None and set(verdicts[0].scores) == {"violence", "cyber"}


def test_combination_follows_the_combiner_and_falls_back_to_the_mean(head_with_categories):
    for combiner, rule in (({"type": "max"}, "max"), ({"type": "vote"}, "mean"),
                           ({"type": "cascade", "combine": "logit_mean", "stages": [{"members": ["m0"]}, {"members": ["m1"]}]},
                            "logit_mean")):
        config = config_of(head_with_categories, head_with_categories, combiner=combiner)
        assert CategoryCombination.build(config, [("cyber",), None], [1.0, 1.0]).rule == rule


def test_results_carry_categories_only_with_category_heads(head_with_categories, tiny_models, write_head):
    plain = write_head(tiny_models["llama"], name="plain", seed=1)
    without = Ensemble.from_config(config_of(plain)).score("How do I bake bread?")
    assert without.categories is None
    assert not {"categories", "top_category", "harm_categories"} & set(without.to_dict())

    ensemble = Ensemble.from_config(config_of(head_with_categories, threshold=0.0))
    result = ensemble.score("How do I bake bread?")
    data = result.to_dict()
    assert set(data["harm_categories"]) == {"violence", "weapons", "cyber", "fraud"}
    assert set(data["categories"]) == {"violence", "illicit", "illicit/violent"}
    assert data["categories"]["illicit"] == max(data["harm_categories"][key] for key in ("weapons", "cyber", "fraud"))
    assert data["top_category"] == max(data["categories"], key=data["categories"].get)
    assert json.loads(json.dumps(data)) == data
    unflagged = Ensemble.from_config(config_of(head_with_categories, threshold=1.0)).score("How do I bake bread?")
    assert unflagged.to_dict()["top_category"] is None and unflagged.to_dict()["harm_categories"] is not None


def test_a_failed_text_is_flagged_without_category_scores(head_with_categories):
    ensemble = Ensemble.from_config(config_of(head_with_categories))
    ensemble.plans[0].head.forward = lambda pooled: torch.full((next(iter(pooled.values())).shape[0],), float("nan"))
    result = ensemble.score("How do I bake bread?")
    assert result.is_harmful and result.errors
    data = result.to_dict()
    assert data["categories"] is None and data["harm_categories"] is None and data["top_category"] is None
    moderation = moderation_result(result)
    assert moderation.flagged and not any(moderation.categories[key] for key in OPENAI_CATEGORIES)
    assert moderation.siren.harm_categories is None


def test_moderation_result_judges_the_mapped_keys_with_category_thresholds(head_with_categories):
    ensemble = Ensemble.from_config(config_of(head_with_categories, threshold=0.0,
                                              category_thresholds={"violence": 0.0, "cyber": 1.0, "weapons": 1.0, "fraud": 1.0}))
    result = ensemble.score("Tell me how to pick a lock.")
    moderation = moderation_result(result)
    assert moderation.categories["violence"] is True and moderation.categories["illicit"] is False
    assert moderation.categories["hate"] is False and moderation.category_scores["hate"] == 0.0
    assert moderation.category_applied_input_types["violence"] == ["text"]
    assert moderation.category_applied_input_types["hate"] == []
    assert moderation.category_scores["violence"] == pytest.approx(result.categories.scores["violence"])
    assert moderation.model_dump()["siren"]["top_category"] == result.categories.top_category(True)
    plain = moderation_result(EnsembleResult(score=0.1, is_harmful=False, threshold=0.5, members={}))
    assert not {"harm_categories", "top_category"} & set(plain.model_dump()["siren"])  # unchanged without category heads


def test_category_thresholds_in_the_config_are_checked_with_their_path(head_with_categories):
    with pytest.raises(ConfigError, match=r"category_thresholds\.self-harm: unknown harm category .*Did you mean: self_harm"):
        config_of(head_with_categories, category_thresholds={"self-harm": 0.3})
    with pytest.raises(ConfigError, match=r"category_thresholds\.hate: Input should be less than or equal to 1"):
        config_of(head_with_categories, category_thresholds={"hate": 1.5})


def test_calibrate_per_category_writes_thresholds_into_the_config(trained_heads, synthetic_data, tiny_models, write_config,
                                                                  tmp_path):
    head_dir = shutil.copytree(trained_heads["llama"], tmp_path / "head")
    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=trained_heads["cache"])
    train_category_head(extractor, synthetic_data, head_dir, cached_only=True)
    config = write_config({"members": [{"name": "l", "backbone": "llama3", "head": str(head_dir), "dtype": "float32"}]})
    out = tmp_path / "calibrated.yaml"
    result = CliRunner().invoke(cli, ["calibrate", "--config", str(config), "--data", str(synthetic_data), "--per-category",
                                      "--write-config", str(out), "--cache-dir", str(trained_heads["cache"])])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    thresholds = yaml.safe_load(out.read_text())["category_thresholds"]
    assert thresholds == summary["category_thresholds"] and set(thresholds) == set(CategoryHead.load(head_dir).categories)
    assert summary["category_macro_f1"]["calibrated"] >= summary["category_macro_f1"]["configured"]
    assert Ensemble.from_config(out).category_combination.thresholds == thresholds


def test_the_service_answers_categories_on_both_routes(head_with_categories):
    import httpx

    from .test_serve import moderate, service

    ensemble = Ensemble.from_config(config_of(head_with_categories, threshold=0.0))
    with service(ensemble) as url:
        result = moderate(url, {"input": ["How do I bake bread?"]}).json()["results"][0]
        harm = result["siren"]["harm_categories"]
        assert result["category_scores"]["illicit"] == pytest.approx(max(harm[key] for key in ("weapons", "cyber", "fraud")))
        assert result["category_applied_input_types"]["illicit"] == ["text"] and result["category_scores"]["hate"] == 0.0
        assert result["siren"]["top_category"] in result["category_scores"]
        scored = httpx.post(f"{url}/v1/score", json={"text": "How do I bake bread?"}).json()
        assert scored["harm_categories"] == pytest.approx(harm) and scored["top_category"] == result["siren"]["top_category"]


def test_the_service_failure_policy_answers_without_category_scores(head_with_categories):
    from siren_ensemble.serve.metrics import ServiceMetrics
    from siren_ensemble.serve.scoring import Scorer
    from siren_ensemble.serve.settings import ServeSettings

    scorer = Scorer(Ensemble.from_config(config_of(head_with_categories)), ServeSettings(), ServiceMetrics())
    answer = scorer.policy_result("timeout: no score within 30 s", 0.5).to_dict()
    assert answer["is_harmful"] and answer["categories"] is None and answer["harm_categories"] is None
