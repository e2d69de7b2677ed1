"""evaluate, calibrate and the score calibration, on heads trained on the synthetic split."""

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from siren_ensemble import Ensemble
from siren_ensemble.calibration import Calibration, fit_calibration
from siren_ensemble.cli import cli
from siren_ensemble.config import load_config
from siren_ensemble.data.records import read_dataset
from siren_ensemble.errors import ArtifactError, ConfigError
from siren_ensemble.evaluation.calibrate import calibrate
from siren_ensemble.data.records import SafetyRecord
from siren_ensemble.evaluation.evaluate import EvaluateOptions, Scored, _misclassified, evaluate
from siren_ensemble.evaluation.metrics import binary_metrics
from siren_ensemble.evaluation.tables import render


def test_evaluate_reports_members_combiners_baselines_and_loso(two_member_config, synthetic_data, trained_heads, tmp_path):
    report = evaluate(two_member_config, synthetic_data, EvaluateOptions(), cache_dir=trained_heads["cache"], plots_dir=tmp_path / "plots")
    scorers = report["scorers"]
    for name in ("member llama", "member qwen3", "ensemble (config)", "ensemble max", "ensemble vote any",
                 "ensemble logit_mean",
                 "ensemble stacking (cross-fitted)", "ensemble stacking+interactions (cross-fitted)", "baseline last-layer probe (llama)", "baseline tf-idf"):
        assert name in scorers, name
    assert set(scorers["member llama"]["per_source"]) == {"harmful-a", "harmful-b", "benign-a", "benign-b"}
    best_layer = max(json.loads((trained_heads["llama"] / "training_report.json").read_text())["layers"],
                     key=lambda entry: (entry["validation_f1"], entry["validation_auroc"]))["layer"]
    assert f"baseline best-layer probe (llama, layer {best_layer})" in scorers
    # Each source left out in turn; a harmful-only source reports recall, a benign-only one FPR.
    loso = report["leave_one_source_out"]
    assert set(loso) == {"harmful-a", "harmful-b", "benign-a", "benign-b"}
    assert loso["harmful-a"]["member llama"]["benign"] == 0 and loso["harmful-a"]["member llama"]["recall"] is not None
    assert loso["benign-b"]["ensemble (config)"]["fpr"] is not None
    tables = render(report)
    assert "## Leave one source out" in tables and "| harmful-a | " in tables
    for name in ("roc.png", "pr.png", "layer_f1.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_scores_equal_the_runtime_scores(two_member_config, synthetic_data, trained_heads):
    report = evaluate(two_member_config, synthetic_data, EvaluateOptions(baselines=False, leave_one_source_out=False),
                      cache_dir=trained_heads["cache"])
    test = read_dataset(synthetic_data, "test")
    results = Ensemble.from_config(two_member_config).score_batch([record.scored_text for record in test])
    labels = [record.label for record in test]
    for name in ("llama", "qwen3"):
        runtime = binary_metrics(labels, [result.members[name] for result in results], 0.5).to_dict()
        reported = report["scorers"][f"member {name}"]["overall"]
        for key in ("f1", "recall", "fpr", "auroc", "auprc"):
            assert reported[key] == pytest.approx(runtime[key], abs=1e-6), (name, key)
    ensemble = binary_metrics(labels, [result.score for result in results], 0.5).to_dict()
    assert report["scorers"]["ensemble (config)"]["overall"]["f1"] == pytest.approx(ensemble["f1"], abs=1e-6)


def _calibrated_head_copies(trained_heads, directory):
    """Copies of the trained heads, each with a member calibration.json (deliberately far from identity)."""
    import shutil

    copies = {}
    for name, (slope, intercept) in (("llama", (0.5, -1.0)), ("qwen3", (2.0, 0.7))):
        copies[name] = directory / f"head-{name}"
        shutil.copytree(trained_heads[name], copies[name])
        Calibration("platt", {"slope": slope, "intercept": intercept}).save(copies[name] / "calibration.json")
    return copies


@pytest.mark.parametrize("kind", ["calibrated", "stacking", "vote"])
def test_evaluate_scores_every_record_exactly_as_the_runtime(kind, tiny_models, synthetic_data, trained_heads, write_config, tmp_path):
    """One decision path: member calibration, combiner, config calibration and threshold, in evaluate as at run time."""
    heads = _calibrated_head_copies(trained_heads, tmp_path)
    members = [{"name": name, "backbone": backbone, "model": str(tiny_models[name]), "head": str(heads[name])}
               for name, backbone in (("llama", "llama3"), ("qwen3", "qwen3"))]
    config = {"members": members}
    if kind == "calibrated":
        Calibration("platt", {"slope": 1.7, "intercept": -0.4}).save(tmp_path / "ensemble-calibration.json")
        config |= {"combiner": {"type": "logit_mean"}, "calibration": "ensemble-calibration.json", "threshold": 0.35}
    elif kind == "stacking":
        result = CliRunner().invoke(cli, ["fit-stacker", "--config", str(write_config({"members": members}, name="plain.yaml")),
                                          "--data", str(synthetic_data), "--out", str(tmp_path / "stacker.json"),
                                          "--interactions", "--target-recall", "0.9", "--cache-dir", str(trained_heads["cache"])])
        assert result.exit_code == 0, result.output
        config |= {"combiner": {"type": "stacking", "params": "stacker.json"}}
    else:
        config |= {"combiner": {"type": "vote", "rule": "any"}}
        members[0]["threshold"], members[1]["threshold"] = 0.3, 0.6
    path = write_config(config)
    report = evaluate(path, synthetic_data, EvaluateOptions(baselines=False, leave_one_source_out=False, stackers=False,
                                                            record_scores=True), cache_dir=trained_heads["cache"])
    test = read_dataset(synthetic_data, "test")
    results = Ensemble.from_config(path).score_batch([record.scored_text for record in test])
    assert report["record_scores"]["ensemble (config)"] == pytest.approx([r.score for r in results], abs=1e-6)
    assert report["scorers"]["ensemble (config)"]["threshold"] == pytest.approx(results[0].threshold, abs=1e-12)
    for name in ("llama", "qwen3"):  # members are reported as their heads score (llm-siren's scale)
        assert report["record_scores"][f"member {name}"] == pytest.approx([r.members[name] for r in results], abs=1e-6)
    if kind == "calibrated":  # the member calibrations really are applied before combining
        plain = Ensemble.from_config(write_config({"members": [dict(m, head=str(trained_heads[m["name"]])) for m in members],
                                                   "combiner": {"type": "logit_mean"}}, name="uncalibrated.yaml"))
        assert max(abs(a.score - b.score) for a, b in zip(plain.score_batch([r.scored_text for r in test[:5]]), results)) > 1e-3


def test_misclassified_examples_are_the_wrong_ones_most_confident_first():
    records = [SafetyRecord(text=f"t{i}", label=label, source=source) for i, (label, source) in enumerate(
        [(1, "a"), (1, "a"), (1, "a"), (1, "a"), (0, "b"), (0, "b"), (0, "b"), (1, "b")])]
    scores = np.array([0.10, 0.45, 0.30, 0.90, 0.95, 0.60, 0.20, 0.05])
    found = _misclassified(records, Scored(scores, 0.5), per_source=2)
    texts = lambda kind, source: [(e["text"], e["score"]) for e in found[kind].get(source, [])]  # noqa: E731
    assert texts("missed_harmful", "a") == [("t0", 0.1), ("t2", 0.3)]  # t1 (0.45) is the third: cut at 2
    assert texts("missed_harmful", "b") == [("t7", 0.05)]
    assert texts("flagged_benign", "b") == [("t4", 0.95), ("t5", 0.6)]
    assert found["flagged_benign"].get("a") is None


def test_evaluate_lists_misclassified_examples_when_asked(two_member_config, synthetic_data, trained_heads):
    report = evaluate(two_member_config, synthetic_data, EvaluateOptions(examples=2, baselines=False),
                      cache_dir=trained_heads["cache"])
    # Leave-one-source-out rows computed in two processes are the same rows.
    side_by_side = evaluate(two_member_config, synthetic_data, EvaluateOptions(examples=2, baselines=False, jobs=2),
                            cache_dir=trained_heads["cache"])
    assert side_by_side["leave_one_source_out"] == report["leave_one_source_out"]
    assert report["misclassified"]["scorer"] == "ensemble (config)"
    assert set(report["misclassified"]) == {"scorer", "missed_harmful", "flagged_benign"}
    assert set(report["leave_one_source_out"]["_misclassified"]) <= {"harmful-a", "harmful-b", "benign-a", "benign-b"}
    tables = render(report)
    assert "## Misclassified examples (test, ensemble (config))" in tables
    assert "## Leave one source out" in tables and "| _misclassified |" not in tables


def test_target_recall_sets_thresholds_on_validation(two_member_config, synthetic_data, trained_heads):
    report = evaluate(two_member_config, synthetic_data, EvaluateOptions(target_recall=0.9, baselines=False, leave_one_source_out=False),
                      cache_dir=trained_heads["cache"])
    assert report["scorers"]["member llama"]["threshold"] != 0.5
    with pytest.raises(Exception, match="--target-recall picks thresholds on a validation split"):
        evaluate(two_member_config, synthetic_data / "test.jsonl", EvaluateOptions(target_recall=0.9), cache_dir=trained_heads["cache"])


@pytest.mark.parametrize("method", [None, "platt", "isotonic"])
def test_calibrate_reaches_the_target_recall_on_validation(two_member_config, synthetic_data, trained_heads, tmp_path, method):
    out = tmp_path / "calibration.json"
    report = calibrate(two_member_config, synthetic_data, 0.95, per_source=True, method=method, min_source_harmful=1,
                       calibration_out=out if method else None, cache_dir=trained_heads["cache"])
    assert report["validation"]["recall"] >= 0.95
    assert report["worst_recall_source"][1] >= 0.95  # per source: every harmful source reaches the target
    assert report["threshold"] <= min(report["per_source_threshold"].values()) + 1e-12
    if method:
        assert Calibration.load(out).method == method


def test_a_calibrated_config_applies_the_mapping_to_the_ensemble_score(two_member_config, synthetic_data, trained_heads, tmp_path):
    calibration_path = two_member_config.parent / "calibration.json"
    report = calibrate(two_member_config, synthetic_data, 0.95, method="platt", calibration_out=calibration_path,
                       cache_dir=trained_heads["cache"])
    result = CliRunner().invoke(cli, ["calibrate", "--config", str(two_member_config), "--data", str(synthetic_data),
                                      "--method", "platt", "--calibration-out", str(calibration_path),
                                      "--write-config", str(two_member_config.parent / "calibrated.yaml"),
                                      "--cache-dir", str(trained_heads["cache"])])
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((two_member_config.parent / "calibrated.yaml").read_text())
    assert written["calibration"] == "calibration.json" and written["threshold"] == pytest.approx(report["threshold"], abs=1e-6)
    texts = ["How do I poison my neighbour?", "How do I bake bread at home?"]
    raw = Ensemble.from_config(two_member_config).score_batch(texts)
    calibrated = Ensemble.from_config(two_member_config.parent / "calibrated.yaml").score_batch(texts)
    mapping = Calibration.load(calibration_path)
    for before, after in zip(raw, calibrated):
        assert after.score == pytest.approx(float(mapping.apply(np.array([before.score]))[0]), abs=1e-9)
        assert after.threshold == pytest.approx(report["threshold"], abs=1e-6)


def test_calibration_fits_are_monotone_and_files_are_checked(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = rng.beta(1 + 4 * labels, 1 + 4 * (1 - labels))
    grid = np.linspace(0, 1, 101)
    for method in ("platt", "isotonic"):
        mapping = fit_calibration(scores, labels, method)
        assert np.all(np.diff(mapping.apply(grid)) >= -1e-12)
        assert Calibration.load(mapping.save(tmp_path / f"{method}.json")).apply(grid) == pytest.approx(mapping.apply(grid))
    (tmp_path / "bad.json").write_text(json.dumps({"method": "platt", "slope": 1.0}))
    with pytest.raises(ArtifactError, match="bad.json: intercept: missing"):
        Calibration.load(tmp_path / "bad.json")


def test_calibration_is_refused_with_the_vote_combiner(trained_heads, tiny_models, write_config, synthetic_data, tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"method": "platt", "slope": 1.0, "intercept": 0.0}))
    member = {"name": "llama", "backbone": "llama3", "model": str(tiny_models["llama"]), "head": str(trained_heads["llama"])}
    with pytest.raises(ConfigError, match="calibration: the vote combiner"):
        load_config(write_config({"members": [member], "combiner": {"type": "vote"}, "calibration": "c.json"}))
    with pytest.raises(ConfigError, match="calibration: .*missing.json does not exist"):
        load_config(write_config({"members": [member], "calibration": "missing.json"}))
    with pytest.raises(ConfigError, match="combiner.type: vote decides by its rule"):
        calibrate(write_config({"members": [member], "combiner": {"type": "vote"}}), synthetic_data, 0.95)


def test_cli_train_evaluate_and_fit_stacker(tiny_models, synthetic_data, trained_heads, tmp_path, write_config):
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--backbone", "llama3", "--model", str(tiny_models["llama"]), "--data", str(synthetic_data),
                                 "--out", str(tmp_path / "head"), "--trials", "2", "--folds", "2", "--layers", "1-2",
                                 "--max-length", "64", "--cache-dir", str(trained_heads["cache"])])
    assert result.exit_code == 0, result.output
    assert "safety neurons" in result.output
    config = write_config({"members": [
        {"name": "a", "backbone": "llama3", "model": str(tiny_models["llama"]), "head": str(tmp_path / "head")},
        {"name": "b", "backbone": "qwen3", "model": str(tiny_models["qwen3"]), "head": str(trained_heads["qwen3"])},
    ]})
    result = runner.invoke(cli, ["evaluate", "--config", str(config), "--data", str(synthetic_data), "--no-loso",
                                 "--out", str(tmp_path / "report.json"), "--cache-dir", str(trained_heads["cache"])])
    assert result.exit_code == 0, result.output
    assert "| member a |" in result.output and json.loads((tmp_path / "report.json").read_text())["split"] == "test"
    result = runner.invoke(cli, ["fit-stacker", "--config", str(config), "--data", str(synthetic_data), "--out", str(tmp_path / "s.json"),
                                 "--cache-dir", str(trained_heads["cache"])])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["train", "--backbone", "llama3", "--model", str(tiny_models["llama"]), "--data", str(synthetic_data),
                                 "--out", str(tmp_path / "x"), "--layers", "one"])
    assert result.exit_code == 2 and "--layers: expected e.g. 4-20" in result.output


def test_a_calibrated_config_goes_anywhere_unless_it_has_relative_paths(tmp_path):
    from siren_ensemble.evaluation.calibrate import write_calibrated_config

    source = tmp_path / "configs" / "ensemble.yaml"
    source.parent.mkdir()
    (source.parent / "head").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    source.write_text(yaml.safe_dump({"members": [{"name": "m", "backbone": "llama3", "head": "pkg:some_pkg/heads/m",
                                                   "model": str(tmp_path / "model.gguf")}]}))
    written = write_calibrated_config(source, elsewhere / "tuned.yaml", 0.25, None)
    assert yaml.safe_load(written.read_text())["threshold"] == 0.25

    source.write_text(yaml.safe_dump({"members": [{"name": "m", "backbone": "llama3", "head": "head"}]}))
    with pytest.raises(Exception, match=r"write it next to .*: its members\[0\]\.head is a relative path"):
        write_calibrated_config(source, elsewhere / "tuned.yaml", 0.25, None)
