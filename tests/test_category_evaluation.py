"""evaluate's harm-category section (per-category metrics, confusion plot, leave one source out) and the
per-category threshold search, on heads trained on the synthetic split."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from siren_ensemble.data.records import SafetyRecord
from siren_ensemble.evaluation.categories import thresholds_for_f1, top_category_confusion
from siren_ensemble.evaluation.evaluate import EvaluateOptions, evaluate
from siren_ensemble.evaluation.tables import render
from siren_ensemble.members import adapter_for
from siren_ensemble.training.categories import train_category_head
from siren_ensemble.training.feature_cache import FeatureExtractor


@pytest.fixture
def categorised_config(trained_heads, tiny_models, synthetic_data, write_config, tmp_path):
    members = []
    for architecture, backbone in (("llama", "llama3"), ("qwen3", "qwen3")):
        head = shutil.copytree(trained_heads[architecture], tmp_path / architecture)
        extractor = FeatureExtractor(adapter_for(backbone, str(tiny_models[architecture])), max_length=64,
                                     cache_dir=trained_heads["cache"])
        train_category_head(extractor, synthetic_data, head, cached_only=True)
        members.append({"name": architecture, "backbone": backbone, "model": str(tiny_models[architecture]), "head": str(head)})
    return write_config({"members": members, "combiner": {"type": "mean"}})


def test_evaluate_reports_categories_confusion_and_leave_one_source_out(categorised_config, synthetic_data, trained_heads,
                                                                       tmp_path):
    report = evaluate(categorised_config, synthetic_data, EvaluateOptions(baselines=False, stackers=False),
                      cache_dir=trained_heads["cache"], plots_dir=tmp_path / "plots")
    section = report["categories"]
    assert set(section["metrics"]) == {"violence", "weapons", "cyber", "fraud", "other_crime", "privacy"}
    violence = section["metrics"]["violence"]
    assert violence["positives"] > 0 and 0 <= violence["f1"] <= 1 and violence["auroc"] > 0.5
    assert section["macro_f1"] is not None and "macro_f1_min30" in section
    assert np.asarray(section["confusion"]["counts"]).sum() >= violence["positives"]
    assert (tmp_path / "plots" / "category_confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert set(section["leave_one_source_out"]) == {"harmful-a", "harmful-b"}
    tables = render(report)
    assert "## Harm categories (test, ensemble)" in tables and "| violence |" in tables
    assert "## Harm categories, leave one source out" in tables and "| harmful-a |" in tables


def test_evaluate_without_category_heads_has_no_category_section(trained_heads, tiny_models, synthetic_data, write_config):
    config = write_config({"members": [{"name": "l", "backbone": "llama3", "model": str(tiny_models["llama"]),
                                        "head": str(trained_heads["llama"])}]})
    report = evaluate(config, synthetic_data, EvaluateOptions(baselines=False, leave_one_source_out=False, stackers=False),
                      cache_dir=trained_heads["cache"])
    assert "categories" not in report and "Harm categories" not in render(report)


def test_thresholds_for_f1_pick_the_best_cut_halfway_to_the_next_score():
    records = [SafetyRecord(label=1, source="s", text=str(i), categories=("cyber",)) for i in range(3)] + \
              [SafetyRecord(label=0, source="s", text=f"b{i}") for i in range(3)]
    scores = np.array([[0.9], [0.8], [0.1], [0.5], [0.4], [0.05]])  # F1 0.8 above 0.65, 0.75 above 0.075
    assert thresholds_for_f1(records, scores, ("cyber",), {"cyber": 0.5}) == {"cyber": pytest.approx(0.65)}
    # No positives: the default stays.
    assert thresholds_for_f1(records[3:], scores[3:], ("cyber",), {"cyber": 0.5}) == {"cyber": 0.5}


def test_confusion_counts_each_true_category_of_harmful_records():
    records = [SafetyRecord(label=1, source="s", text="a", categories=("cyber", "fraud")),
               SafetyRecord(label=1, source="s", text="b"), SafetyRecord(label=0, source="s", text="c")]
    scores = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    assert top_category_confusion(records, scores, ("cyber", "fraud"))["counts"] == [[1, 0], [1, 0]]
