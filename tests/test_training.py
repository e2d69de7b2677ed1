"""Training: cached features, the two SIREN stages, the written head and its report."""

import json

import numpy as np
import pytest
import torch

from siren_ensemble import Ensemble
from siren_ensemble.calibration import MEMBER_CALIBRATION_FILE, Calibration
from siren_ensemble.data.records import read_dataset
from siren_ensemble.errors import InputError
from siren_ensemble.evaluation.metrics import binary_metrics
from siren_ensemble.head import CONFIG_FILE, WEIGHTS_FILE, MLPSpec, SirenHead, SirenMLP
from siren_ensemble.members import adapter_for
from siren_ensemble.training.feature_cache import FeatureExtractor
from siren_ensemble.training.mlp_search import _fold_standardisation
from siren_ensemble.training.pipeline import REPORT_FILE, SUMMARY_FILE, TrainOptions, train_head


def _config(write_config, tiny_models, heads, architectures=("llama",)):
    backbones = {"llama": "llama3", "qwen3": "qwen3"}
    return write_config({"members": [
        {"name": architecture, "backbone": backbones[architecture], "model": str(tiny_models[architecture]), "head": str(heads[architecture]),
         "dtype": "float32"}  # compared with llm-siren in float32
        for architecture in architectures
    ]})


def test_trained_head_separates_held_out_texts(trained_heads, synthetic_data, tiny_models, write_config):
    test = read_dataset(synthetic_data, "test")
    ensemble = Ensemble.from_config(_config(write_config, tiny_models, trained_heads, ("llama", "qwen3")))
    results = ensemble.score_batch([record.scored_text for record in test])
    labels = [record.label for record in test]
    for name in ("llama", "qwen3"):
        scores = [result.members[name] for result in results]
        assert binary_metrics(labels, scores, 0.5).f1 >= 0.9, name


def test_trained_head_scores_identically_in_llm_siren(trained_heads, synthetic_data, tiny_models, write_config):
    siren_guard = pytest.importorskip("siren_guard", reason="llm-siren is a test dependency")
    texts = [record.scored_text for record in read_dataset(synthetic_data, "test")[:20]]
    ours = Ensemble.from_config(_config(write_config, tiny_models, trained_heads)).score_batch(texts)
    reference = siren_guard.SirenGuard.from_pretrained(str(trained_heads["llama"]), device="cpu", dtype=torch.float32)
    calibration = Calibration.load(trained_heads["llama"] / MEMBER_CALIBRATION_FILE)
    for mine, theirs in zip(ours, reference.score_batch(texts)):
        assert mine.members["llama"] == pytest.approx(theirs.score, abs=1e-5)  # the head itself is llm-siren's
        # The ensemble reads it through the member calibration train wrote beside it.
        assert mine.score == pytest.approx(float(calibration.apply(np.array([theirs.score]))[0]), abs=1e-5)


def test_report_describes_the_head(trained_heads):
    head = SirenHead.load(trained_heads["llama"])
    report = json.loads((trained_heads["llama"] / REPORT_FILE).read_text())
    assert [entry["layer"] for entry in report["layers"]] == head.config.layers
    assert sum(entry["neurons"] for entry in report["layers"]) == head.config.mlp.input_dim == report["input_dim"]
    assert {entry["layer"]: entry["alpha"] for entry in report["layers"]} == pytest.approx(
        {layer: head.config.layer_weight(layer) for layer in head.config.layers}, abs=1e-6)
    assert list(head.config.mlp.layer_dims) == report["mlp"]["layer_dims"]
    assert len(report["trials"]) == 3 and report["data"]["fingerprint"]
    assert "safety neurons" in (trained_heads["llama"] / SUMMARY_FILE).read_text()


def test_same_seed_and_data_give_the_same_head(trained_heads, synthetic_data, tiny_models, tmp_path):
    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=trained_heads["cache"])
    train_head(extractor, synthetic_data, tmp_path / "again", TrainOptions(trials=3, folds=2))
    assert extractor.loaded == {}, "features should come from the cache, without loading the backbone"
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        assert (tmp_path / "again" / name).read_bytes() == (trained_heads["llama"] / name).read_bytes()


def test_member_calibration_is_fitted_on_out_of_fold_scores(trained_heads, synthetic_data, tiny_models):
    from siren_ensemble.calibration import fit_calibration
    from siren_ensemble.features import weighted_neuron_features
    from siren_ensemble.training.crossfit import cross_fitted_head_scores, record_groups
    from siren_ensemble.training.mlp_search import MLPParams, predict

    head = SirenHead.load(trained_heads["llama"])
    report = json.loads((trained_heads["llama"] / REPORT_FILE).read_text())
    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=trained_heads["cache"])
    records = read_dataset(synthetic_data, "train") + read_dataset(synthetic_data, "validation")
    features = [extractor.features([r.scored_text for r in read_dataset(synthetic_data, split)]) for split in ("train", "validation")]
    alphas = {layer: head.config.layer_weight(layer) for layer in head.config.layers}
    x = np.concatenate([weighted_neuron_features(f, head.config.neurons(), alphas) for f in features])
    labels = np.array([r.label for r in records])
    out_of_fold = cross_fitted_head_scores(x, labels, record_groups(records), MLPParams.from_dict(report["mlp"]), folds=2)
    saved = Calibration.load(trained_heads["llama"] / MEMBER_CALIBRATION_FILE)
    assert saved.parameters == pytest.approx(fit_calibration(out_of_fold, labels, "platt").parameters, rel=1e-6)
    assert report["calibration"]["slope"] == pytest.approx(saved.parameters["slope"]) and saved.parameters["slope"] > 0
    # Not the in-sample scores: on train the final head is more confident than its fold refits.
    in_sample = predict(head.mlp, x[: len(read_dataset(synthetic_data, "train"))])
    assert not np.allclose(in_sample, out_of_fold[: len(in_sample)], atol=1e-3)


def test_feature_cache_key_tracks_texts_and_settings(tiny_models, tmp_path):
    adapter = adapter_for("llama3", str(tiny_models["llama"]))
    extractor = FeatureExtractor(adapter, max_length=64, cache_dir=tmp_path)
    first = extractor.features(["a text", "another one"])
    assert sorted(first) == [0, 1, 2, 3] and first[0].shape == (2, 64)
    assert extractor.cache_key(["a text", "another one"]) != extractor.cache_key(["a text", "another two"])
    assert extractor.cache_key(["a"]) != FeatureExtractor(adapter, max_length=32, cache_dir=tmp_path).cache_key(["a"])
    again = FeatureExtractor(adapter, max_length=64, cache_dir=tmp_path).features(["a text", "another one"])
    assert all(np.array_equal(first[layer], again[layer]) for layer in first)


def test_folding_the_standardisation_into_the_first_layer_is_exact():
    torch.manual_seed(0)
    mlp = SirenMLP(MLPSpec(input_dim=6, layer_dims=[5], dropout_rates=[0.0])).eval()
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(10, 6)).astype(np.float32)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    with torch.no_grad():
        expected = mlp(torch.as_tensor((x - mean) / std))
        _fold_standardisation(mlp, mean, std)
        assert torch.allclose(mlp(torch.as_tensor(x)), expected, atol=1e-5)


def test_training_refuses_bad_data_and_layers(tiny_models, synthetic_data, tmp_path):
    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=tmp_path / "cache")
    with pytest.raises(InputError, match="split directory"):
        train_head(extractor, synthetic_data / "train.jsonl", tmp_path / "out")
    with pytest.raises(InputError, match="--layers: layer 9 is outside 0-3"):
        train_head(extractor, synthetic_data, tmp_path / "out", TrainOptions(layers=(1, 9), trials=1))
    one_class = tmp_path / "one_class"
    one_class.mkdir()
    for split in ("train", "validation", "test"):
        lines = [line for line in (synthetic_data / f"{split}.jsonl").read_text().splitlines() if '"label": 1' in line]
        (one_class / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="train.jsonl: needs both"):
        train_head(extractor, one_class, tmp_path / "out")
