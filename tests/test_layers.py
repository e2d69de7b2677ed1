"""`siren-ensemble layers`: per-layer probe F1, the Safety Layers cosine-gap curve, and the recommended cut."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from siren_ensemble.cli import cli
from siren_ensemble.data.records import read_dataset
from siren_ensemble.evaluation.layers import GapRange, gap_range, pair_cosines, probe_knee, recommend_cut
from siren_ensemble.members import adapter_for
from siren_ensemble.training.feature_cache import FeatureExtractor

from .conftest import DEPTH


def _brute_force_mean(first, second, same):
    def unit(row):
        norm = np.linalg.norm(row)
        return row / norm if norm > 0 else row

    values = [float(unit(a) @ unit(b)) for i, a in enumerate(first) for j, b in enumerate(second) if not (same and i == j)]
    return sum(values) / len(values)


@pytest.mark.parametrize("center", [False, True])
def test_pair_cosines_equal_the_mean_over_every_pair(center):
    rng = np.random.default_rng(0)
    states = rng.normal(size=(23, 7)) + np.array([3.0, 0, 0, 0, 0, 0, 1.0])
    states[4] = 0.0  # an empty text's state: cosine 0 with everything, and it still counts as a pair
    labels = np.array([index % 3 == 0 for index in range(23)], dtype=int)
    cosines = pair_cosines(states, labels, center=center)
    used = states - states.mean(axis=0) if center else states
    benign, harmful = used[labels == 0], used[labels == 1]
    assert cosines.benign_benign == pytest.approx(_brute_force_mean(benign, benign, same=True), abs=1e-12)
    assert cosines.benign_harmful == pytest.approx(_brute_force_mean(benign, harmful, same=False), abs=1e-12)
    assert cosines.harmful_harmful == pytest.approx(_brute_force_mean(harmful, harmful, same=True), abs=1e-12)
    assert cosines.gap == pytest.approx(cosines.benign_benign - cosines.benign_harmful)


def test_gap_curve_of_known_geometry_opens_and_stabilises_where_built():
    """Benign states all point one way, harmful ones turn away by theta_l: the gap is exactly 1 - cos(theta_l)."""
    angles = [0, 0, 0, 30, 60, 90, 90, 90]  # gaps 0, 0, 0, 0.134, 0.5, 1, 1, 1
    rng = np.random.default_rng(1)
    labels = np.array([0] * 10 + [1] * 6)
    gaps = []
    for degrees in angles:
        theta = math.radians(degrees)
        benign = np.tile([1.0, 0.0, 0.0], (10, 1)) * rng.uniform(0.5, 2.0, size=(10, 1))  # lengths do not matter
        harmful = np.tile([math.cos(theta), math.sin(theta), 0.0], (6, 1)) * rng.uniform(0.5, 2.0, size=(6, 1))
        cosines = pair_cosines(np.concatenate([benign, harmful]), labels)
        assert cosines.benign_benign == pytest.approx(1.0) and cosines.harmful_harmful == pytest.approx(1.0)
        assert cosines.gap == pytest.approx(1.0 - math.cos(theta), abs=1e-12)
        gaps.append(cosines.gap)
    assert gap_range(gaps) == GapRange(opens=3, stabilises=5, peak=5)
    assert gap_range(gaps, open_share=0.4, stable_share=0.45) == GapRange(opens=4, stabilises=4, peak=5)


def test_gap_range_measures_the_rise_from_the_dip_before_the_peak():
    assert gap_range([0.3, 0.1, 0.1, 0.2, 0.5, 0.5]) == GapRange(opens=3, stabilises=4, peak=4)
    assert gap_range([0.4, 0.3, 0.2, 0.1]) == GapRange(opens=None, stabilises=None, peak=0)  # it never rises
    assert gap_range([0.2, 0.2, 0.2]) == GapRange(opens=None, stabilises=None, peak=0)


def test_probe_knee_and_recommended_cut():
    f1 = {0: 0.70, 1: 0.80, 2: 0.896, 3: 0.90, 4: 0.88}
    assert probe_knee(f1, tolerance=0.005) == 2
    assert probe_knee(f1, tolerance=0.0) == 3
    assert recommend_cut(5, knee=2, gaps=GapRange(1, 3, 4)).max_layer == 3  # the gap settles deeper than the knee
    assert recommend_cut(5, knee=2, gaps=GapRange(0, 1, 1)).max_layer == 2
    cut = recommend_cut(5, knee=2, gaps=GapRange(None, None, 0))
    assert (cut.max_layer, cut.blocks_run, cut.share_of_depth) == (2, 3, 0.6)


@pytest.fixture
def member_config(tiny_models, write_config):
    # The head need not exist: layers analyses the backbone a head is (or will be) trained on.
    return write_config({"members": [{"name": "tiny", "backbone": "llama3", "model": str(tiny_models["llama"]), "head": "not-yet"}]})


def test_cli_writes_json_and_png_from_the_cached_features(member_config, synthetic_data, tiny_models, tmp_path):
    cache = tmp_path / "cache"
    result = CliRunner().invoke(cli, ["layers", "--config", str(member_config), "--member", "tiny", "--data", str(synthetic_data),
                                      "--out", str(tmp_path / "out"), "--max-length", "64", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "layers.json").read_text())
    assert (tmp_path / "out" / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [row["layer"] for row in report["layers"]] == list(range(DEPTH))
    assert all(0.0 <= row["probe_f1"] <= 1.0 for row in report["layers"])

    # The curve is computed on exactly the features train caches for this backbone (train + validation).
    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=cache)
    splits = [read_dataset(synthetic_data, split) for split in ("train", "validation")]
    features = [extractor.features([record.scored_text for record in records]) for records in splits]
    labels = np.array([record.label for records in splits for record in records])
    for row in report["layers"]:
        expected = pair_cosines(np.concatenate([part[row["layer"]] for part in features]), labels)
        assert row["cos_benign_benign"] == pytest.approx(expected.benign_benign, abs=2e-6)
        assert row["cos_benign_harmful"] == pytest.approx(expected.benign_harmful, abs=2e-6)
        assert row["gap"] == pytest.approx(expected.gap, abs=2e-6)

    assert report["gap"] == {"peak": int(np.argmax([row["gap"] for row in report["layers"]])),
                             **{key: report["gap"][key] for key in ("opens", "stabilises")}}
    recommended = report["recommended"]
    assert report["probe_knee"] <= recommended["max_layer"] < DEPTH
    assert recommended["depth_budget"] == pytest.approx((recommended["max_layer"] + 1) / DEPTH, abs=1e-4)
    assert f"recommended depth cut: train --max-layer {recommended['max_layer']}" in result.output
    assert report["data"]["harmful"] + report["data"]["benign"] == len(labels)


def test_cli_names_an_unknown_member(member_config, synthetic_data, tmp_path):
    result = CliRunner().invoke(cli, ["layers", "--config", str(member_config), "--member", "nobody", "--data", str(synthetic_data),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "--member: " in result.output and "has no member 'nobody' (it has tiny)" in result.output
