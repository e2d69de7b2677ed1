"""Our metrics equal scikit-learn's (or a brute-force definition) on random inputs."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from siren_ensemble.evaluation.metrics import binary_metrics, threshold_for_recall, tpr_at_fpr
from siren_ensemble.features import layer_alphas, select_neurons


@pytest.mark.parametrize("seed", range(5))
def test_threshold_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.25), 0, 1)
    threshold = float(rng.uniform(0.3, 0.7))
    predicted = (scores >= threshold).astype(int)
    metrics = binary_metrics(labels, scores, threshold)
    tn, fp, fn, tp = confusion_matrix(labels, predicted).ravel()
    assert metrics.f1 == pytest.approx(f1_score(labels, predicted))
    assert metrics.macro_f1 == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert metrics.precision == pytest.approx(precision_score(labels, predicted))
    assert metrics.recall == pytest.approx(recall_score(labels, predicted))
    assert metrics.fpr == pytest.approx(fp / (fp + tn))
    assert metrics.auroc == pytest.approx(roc_auc_score(labels, scores))
    assert (metrics.harmful, metrics.benign) == (int(labels.sum()), int(len(labels) - labels.sum()))


@pytest.mark.parametrize("seed", range(5))
def test_tpr_at_fpr_is_the_best_recall_within_the_fpr_budget(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 2)  # ties on purpose
    for budget in (0.01, 0.05, 0.2):
        best = 0.0
        for threshold in np.unique(np.append(scores, np.inf)):
            predicted = scores >= threshold
            fpr = predicted[labels == 0].mean()
            if fpr <= budget:
                best = max(best, predicted[labels == 1].mean())
        assert tpr_at_fpr(labels, scores, budget) == pytest.approx(best)


def test_single_class_metrics_are_none_not_zero():
    harmful_only = binary_metrics([1, 1, 1], [0.9, 0.2, 0.6], 0.5)
    assert harmful_only.recall == pytest.approx(2 / 3)
    assert harmful_only.fpr is None and harmful_only.auroc is None and harmful_only.macro_f1 is None
    benign_only = binary_metrics([0, 0], [0.9, 0.2], 0.5)
    assert benign_only.fpr == 0.5 and benign_only.recall is None and benign_only.f1 is None


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 1.0])
def test_threshold_for_recall_reaches_the_target_without_extra_false_positives(target):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    scores = rng.beta(2 + 3 * labels, 2 + 3 * (1 - labels))
    threshold = threshold_for_recall(labels, scores, target)
    recall = (scores[labels == 1] >= threshold).mean()
    assert recall >= target
    harmful_sorted = np.sort(scores[labels == 1])[::-1]
    tightest = harmful_sorted[int(np.ceil(target * len(harmful_sorted))) - 1]
    # Moving down from the tightest cut never adds a validation false positive.
    assert (scores[labels == 0] >= threshold).sum() == (scores[labels == 0] >= tightest).sum()
    with pytest.raises(ValueError, match="no harmful"):
        threshold_for_recall([0, 0], [0.1, 0.2], target)


@pytest.mark.parametrize("seed", range(5))
def test_select_neurons_is_the_smallest_set_reaching_eta(seed):
    weights = np.random.default_rng(seed).laplace(size=50)
    for eta in (0.5, 0.9, 1.0):
        chosen = select_neurons(weights, eta)
        share = np.abs(weights[chosen]).sum() / np.abs(weights).sum()
        assert share >= eta - 1e-9
        # Any smaller set reaches less: drop the smallest chosen weight and the share falls short.
        smallest = min(chosen, key=lambda i: abs(weights[i]))
        assert (np.abs(weights[chosen]).sum() - abs(weights[smallest])) / np.abs(weights).sum() < eta
        assert chosen == sorted(chosen)
    assert select_neurons(np.zeros(5), 0.9) == [0]  # an all-zero probe still keeps one neuron


def test_layer_alphas_min_max_with_floor():
    alphas = layer_alphas({0: 0.5, 1: 0.9, 2: 0.7, 3: 0.52})
    assert alphas[1] == 1.0 and alphas[0] == 0.1 and alphas[2] == pytest.approx(0.5)
    assert alphas[3] == 0.1  # 0.05 after normalising, raised to the floor
    assert layer_alphas({0: 0.8, 1: 0.8}) == {0: 1.0, 1: 1.0}
