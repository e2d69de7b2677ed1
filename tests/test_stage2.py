"""Stage 2 never does worse than the stage-1 probes it is built from: the exact logistic embedding,
enough optimiser steps on small data, and the fallback and warning when the head is below the best probe."""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from siren_ensemble.data.records import read_dataset
from siren_ensemble.head import MLPSpec, SirenHead, SirenMLP
from siren_ensemble.members import adapter_for
from siren_ensemble.training import pipeline
from siren_ensemble.training.feature_cache import FeatureExtractor
from siren_ensemble.training.mlp_search import (
    FitOptions, MLPParams, Scored, embed_logistic, fit_logistic, fit_mlp, logistic_params, predict, score, search_mlp,
)
from siren_ensemble.training.pipeline import REPORT_FILE, SUMMARY_FILE, TrainOptions, train_head
from siren_ensemble.training.probes import LayerProbe, ProbeComparison

BACKBONES = {"llama": "llama3", "qwen3": "qwen3"}


@pytest.fixture(scope="session")
def risk_word_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("risk_word_cache")


def _raw_features(rows: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Far from zero mean and unit scale (as hidden states are), so the folded standardisation matters."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8)) * rng.uniform(0.1, 20.0, size=8) + rng.uniform(-50, 50, size=8)
    signal = (x[:, 2] - x[:, 2].mean()) / x[:, 2].std() - 0.5 * (x[:, 5] - x[:, 5].mean()) / x[:, 5].std()
    y = (signal + rng.normal(scale=0.7, size=rows) > 0).astype(np.int64)
    return x.astype(np.float32), y


@pytest.mark.parametrize("columns", [None, (2, 6)])
def test_logistic_embedding_gives_the_probabilities_of_the_sklearn_model(columns):
    x, y = _raw_features()
    mlp = fit_logistic(x, y, C=0.5, columns=columns)
    start, stop = columns or (0, x.shape[1])
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000))
    reference.fit(x[:, start:stop].astype(np.float64), y)
    expected = reference.predict_proba(x[:, start:stop].astype(np.float64))[:, 1]
    # The saved MLP reads raw features: the standardisation is folded into its first layer.
    assert np.allclose(predict(mlp, x), expected, atol=1e-5)
    assert expected.min() < 0.2 and expected.max() > 0.8 and np.median(np.minimum(expected, 1 - expected)) > 0.01
    if columns is not None:
        outside = [index for index in range(x.shape[1]) if not start <= index < stop]
        assert torch.all(mlp.network[0].weight[:, outside] == 0)


def test_logistic_embedding_is_llm_siren_s_mlp_format():
    weights, bias = np.array([1.5, -2.0, 0.25]), -0.3
    mlp = embed_logistic(weights, bias)
    x = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    assert np.allclose(predict(mlp, x), 1.0 / (1.0 + np.exp(-(x @ weights + bias))), atol=1e-6)
    fresh = SirenMLP(MLPSpec(input_dim=3, layer_dims=[2], dropout_rates=[0.0]))
    fresh.load_state_dict(mlp.state_dict(), strict=True)
    assert [type(module).__name__ for module in fresh.network] == ["Linear", "ReLU", "Linear"]


def test_a_small_training_set_gets_enough_steps_even_at_the_lowest_learning_rate():
    x, y = _raw_features(rows=180)
    params = MLPParams((32,), (0.0,), learning_rate=3e-4, weight_decay=1e-4, epochs=30)
    mlp, best_epoch = fit_mlp(x[:120], y[:120], params, FitOptions(), x[120:], y[120:])
    _, auroc = score(y[120:], predict(mlp, x[120:]))
    _, linear_auroc = score(y[120:], predict(fit_logistic(x[:120], y[:120], C=1.0), x[120:]))
    # 30 epochs of one batch were 30 Adam steps at 3e-4: an MLP barely off its initialisation (AUROC 0.52 here).
    assert best_epoch > 30 and auroc > linear_auroc - 0.05, (best_epoch, auroc, linear_auroc)


def test_search_scores_the_logistic_candidates_on_the_same_folds():
    x, y = _raw_features(rows=240)
    groups = np.array([str(index) for index in range(len(y))])
    result = search_mlp(x, y, groups, trials=1, folds=3, logistic_columns=(None, (0, 4)))
    kinds = [(candidate.params.kind, candidate.params.columns) for candidate in result.candidates]
    assert kinds[0] == ("mlp", None) and ("logistic", None) in kinds and ("logistic", (0, 4)) in kinds
    best = max(result.candidates, key=lambda candidate: (candidate.f1, candidate.auroc))
    assert result.cv_f1 == best.f1 and result.cv_of(result.params) is not None
    assert result.trials[0]["params"]["learning_rate"] == 3e-3, "trial 0 is the well-conditioned baseline"


def test_mlp_params_read_old_and_new_reports():
    old = {"layer_dims": [64], "dropout_rates": [0.1], "learning_rate": 1e-3, "weight_decay": 1e-4, "epochs": 12}
    assert MLPParams.from_dict(old) == MLPParams((64,), (0.1,), 1e-3, 1e-4, 12)
    logistic = logistic_params(0.1, (3, 9))
    assert MLPParams.from_dict(json.loads(json.dumps(logistic.to_dict()))) == logistic


def test_probe_comparison_flags_a_head_below_the_best_probe():
    best = LayerProbe(0, 0.1, 0.96, 10, (1, 2), validation_auroc=0.99)
    last = LayerProbe(3, 0.1, 0.80, 10, (1, 2), validation_auroc=0.90)
    assert not ProbeComparison(best, last, head_f1=0.958, head_auroc=0.995).head_below_best_probe  # within tolerance
    below = ProbeComparison(best, last, head_f1=0.67, head_auroc=0.58)
    assert below.head_below_best_probe and below.shortfall == pytest.approx(0.41)
    assert "below the layer 0 probe" in below.to_dict()["warning"]


def _train(tiny_models, data, out, cache, architecture="llama", **options) -> tuple[dict, FeatureExtractor]:
    extractor = FeatureExtractor(adapter_for(BACKBONES[architecture], str(tiny_models[architecture])), max_length=32, cache_dir=cache)
    return train_head(extractor, data, out, TrainOptions(**options)), extractor


def _scores(head_dir, extractor: FeatureExtractor, texts: list[str]) -> np.ndarray:
    head = SirenHead.load(head_dir)
    features = extractor.features(texts)
    return head({layer: torch.as_tensor(features[layer]) for layer in head.config.layers}).numpy()


def _held_out_f1(head_dir, extractor: FeatureExtractor, data) -> float:
    test = read_dataset(data, "test")
    scores = _scores(head_dir, extractor, [record.scored_text for record in test])
    return float(f1_score([record.label for record in test], scores >= SirenHead.load(head_dir).default_threshold))


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_head_is_not_below_the_best_probe_on_a_one_word_task(architecture, tiny_models, risk_word_data, risk_word_cache, tmp_path):
    out = tmp_path / "head"
    report, extractor = _train(tiny_models, risk_word_data, out, risk_word_cache, architecture, trials=4, folds=3)
    comparison = report["probe_comparison"]
    assert comparison["best_probe"]["validation_f1"] >= 0.9, "the task is meant to be easy for one probe"
    assert not comparison["head_below_best_probe"] and comparison["warning"] is None, comparison
    assert comparison["head"]["validation_f1"] >= comparison["best_probe"]["validation_f1"] - comparison["tolerance"]
    assert report["cv"]["auroc"] >= 0.95, report["cv"]
    assert _held_out_f1(out, extractor, risk_word_data) >= 0.95
    assert "WARNING" not in (out / SUMMARY_FILE).read_text()


def _sabotaged_search(monkeypatch, keep_logistic: bool):
    """The search's winner replaced by an MLP that cannot learn (one epoch at lr 1e-6)."""
    real = pipeline.search_mlp
    useless = MLPParams((32,), (0.0,), learning_rate=1e-6, weight_decay=0.0, epochs=1)

    def search(*args, **kwargs):
        result = real(*args, **kwargs)
        return dataclasses.replace(result, params=useless, candidates=[Scored(useless, 0.5, 0.5)] + result.candidates[1:])

    monkeypatch.setattr(pipeline, "search_mlp", search)
    if not keep_logistic:
        monkeypatch.setattr(pipeline, "logistic_candidates", lambda columns: [])


def test_a_head_below_the_best_probe_falls_back_to_the_logistic_model(monkeypatch, tiny_models, risk_word_data, risk_word_cache, tmp_path):
    _sabotaged_search(monkeypatch, keep_logistic=True)
    report, extractor = _train(tiny_models, risk_word_data, tmp_path / "head", risk_word_cache, trials=1)
    assert report["stage2"]["fallback"] and report["mlp"]["kind"] == "logistic"
    assert not report["probe_comparison"]["head_below_best_probe"]
    assert SirenHead.load(tmp_path / "head").config.mlp.layer_dims == [2]
    siren_guard = pytest.importorskip("siren_guard", reason="llm-siren is a test dependency")
    texts = [record.scored_text for record in read_dataset(risk_word_data, "test")[:20]]
    reference = siren_guard.SirenGuard.from_pretrained(str(tmp_path / "head"), device="cpu", dtype=torch.float32)
    theirs = [result.score for result in reference.score_batch(texts)]
    assert np.allclose(_scores(tmp_path / "head", extractor, texts), theirs, atol=1e-5)


def test_a_head_still_below_the_best_probe_is_reported_loudly(monkeypatch, tiny_models, risk_word_data, risk_word_cache, tmp_path, caplog):
    _sabotaged_search(monkeypatch, keep_logistic=False)
    with caplog.at_level(logging.WARNING, logger=pipeline.__name__):
        report, _ = _train(tiny_models, risk_word_data, tmp_path / "head", risk_word_cache, trials=1)
    comparison = report["probe_comparison"]
    assert comparison["head_below_best_probe"] and not report["stage2"]["fallback"]
    assert any("below the layer" in record.message for record in caplog.records if record.levelno == logging.WARNING)
    assert (tmp_path / "head" / SUMMARY_FILE).read_text().startswith("WARNING: ")
    assert json.loads((tmp_path / "head" / REPORT_FILE).read_text())["probe_comparison"]["warning"]


def test_layer_probes_in_parallel_are_the_same_probes():
    from siren_ensemble.training.probes import fit_layer_probes

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 160)
    layers = {layer: rng.normal(size=(160, 12)) + labels[:, None] * (layer + 1) * 0.3 for layer in range(3)}
    train, validation = ({k: v[:120] for k, v in layers.items()}, {k: v[120:] for k, v in layers.items()})
    arguments = (train, labels[:120], validation, labels[120:], [0, 1, 2], 0.9)
    assert fit_layer_probes(*arguments, jobs=2) == fit_layer_probes(*arguments, jobs=1)
