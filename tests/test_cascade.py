"""The cascade combiner: stages run cheapest first, later members only on undecided texts, bands fitted on validation."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from siren_ensemble import Ensemble
from siren_ensemble.cascade import CascadeCombiner, CascadeOptions, run_stages
from siren_ensemble.cli import cli
from siren_ensemble.combiners import MemberView, logit, sigmoid
from siren_ensemble.config import EnsembleConfig
from siren_ensemble.decision import DecisionPath
from siren_ensemble.errors import ConfigError
from siren_ensemble.evaluation.calibrate import calibrate, write_calibrated_config
from siren_ensemble.evaluation.cascade_bands import BandRule, fit_bands
from siren_ensemble.members import validate_plan

from .conftest import HIDDEN, TEXTS

MANY_TEXTS = TEXTS + [f"text number {i} " * (i % 5 + 1) for i in range(16)]


# ---- the decision path on given scores (no models) ---------------------------------------------

def _path(stages: list[dict], names=("a", "b", "c"), threshold=0.5, policy="fail_closed", combine="logit_mean") -> DecisionPath:
    views = [MemberView(name, 1.0, 0.5) for name in names]
    combiner = CascadeCombiner(CascadeOptions.model_validate({"stages": stages, "combine": combine}), views, Path("."))
    return DecisionPath(tuple(names), (None,) * len(names), combiner, None, threshold, policy)


def _plain_cascade(scores: np.ndarray, stages: list[dict], names=("a", "b", "c")) -> tuple[list[float], list[int]]:
    """The cascade written out row by row: pooled log-odds of the members run so far, bands checked in turn."""
    final, decided_by = [], []
    for row in scores:
        run: list[int] = []
        for index, stage in enumerate(stages):
            run += [names.index(name) for name in stage["members"]]
            score = float(sigmoid(np.mean(logit(row[run]))))
            low, high = stage.get("low"), stage.get("high")
            if index == len(stages) - 1 or (low is not None and score < low) or (high is not None and score >= high):
                final.append(score)
                decided_by.append(index)
                break
    return final, decided_by


STAGES = [{"members": ["a"], "low": 0.2, "high": 0.9}, {"members": ["b"], "low": 0.3, "high": 0.7}, {"members": ["c"]}]


def test_decisions_equal_the_cascade_computed_by_hand():
    scores = np.random.default_rng(0).uniform(0.01, 0.99, size=(400, 3))
    decisions = _path(STAGES).decide(scores, np.zeros(len(scores), dtype=bool))
    expected, stages = _plain_cascade(scores, STAGES)
    assert decisions.scores == pytest.approx(expected, abs=1e-12)
    assert list(decisions.decided_by) == stages
    assert list(decisions.is_harmful) == [score >= 0.5 for score in expected]
    assert set(stages) == {0, 1, 2}  # every stage decides some texts on these scores
    assert _path(STAGES).scores(scores) == pytest.approx(expected, abs=1e-12)  # evaluate and calibrate read the same


def test_decide_through_a_stage_leaves_the_rest_pending_and_ignores_members_not_run():
    scores = np.array([[0.1, np.nan, np.nan], [0.5, np.nan, np.nan], [0.95, np.nan, np.nan]])
    decisions = _path(STAGES).decide(scores, np.zeros(scores.shape, dtype=bool), through=1)
    assert list(decisions.decided_by) == [0, -1, 0]
    assert list(decisions.pending) == [False, True, False]
    assert decisions.errors == ({}, {}, {}) and not decisions.failed.any()  # members not run are not failures


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
def test_a_failed_member_stops_the_text_under_fail_closed_and_goes_on_under_fail_open(policy):
    row = np.array([[0.05, 0.6, 0.6]])  # a alone would decide it benign at stage 0
    failed = np.array([[True, False, False]])
    decisions = _path(STAGES, policy=policy).decide(np.where(failed, np.nan, row), failed)
    assert decisions.failed[0]
    if policy == "fail_closed":  # later members cannot change a fail-closed verdict: stop there
        assert decisions.decided_by[0] == 0 and decisions.scores[0] == 1.0 and decisions.is_harmful[0]
    else:  # never decided by the failed stage's band; later, the failed member counts as benign (0.0)
        stage_1 = float(sigmoid(np.mean(logit(np.array([0.0, 0.6])))))
        assert stage_1 < STAGES[1]["low"]
        assert decisions.decided_by[0] == 1 and decisions.scores[0] == pytest.approx(stage_1)


def test_a_non_finite_member_score_is_a_failure_at_its_stage():
    decisions = _path(STAGES).decide(np.array([[0.5, np.inf, 0.5]]), np.array([False]))
    assert decisions.decided_by[0] == 1 and decisions.scores[0] == 1.0
    assert "b" in decisions.errors[0]


def test_run_stages_without_failures_matches_the_combiner():
    scores = np.random.default_rng(1).uniform(size=(50, 3))
    path = _path(STAGES)
    assert run_stages(path.stages, scores).scores == pytest.approx(path.combiner.combine(scores))


# ---- config errors name the field ---------------------------------------------------------------

@pytest.fixture
def head(tiny_models, write_head):
    return write_head(tiny_models["llama"], name="h", seed=3)


def _config(head, combiner: dict, **extra) -> dict:
    return {"members": [{"name": name, "backbone": "llama3", "head": str(head)} for name in ("a", "b", "c")],
            "combiner": {"type": "cascade", **combiner}, **extra}


@pytest.mark.parametrize("combiner, extra, message", [
    ({"stages": [{"members": ["a"]}, {"members": ["b", "x"]}]}, {},
     r"combiner\.stages\[1\]\.members\[1\]: unknown member 'x'\. Members: a, b, c"),
    ({"stages": [{"members": ["a"]}, {"members": ["b", "c", "a"]}]}, {},
     r"combiner\.stages\[1\]\.members\[2\]: 'a' is already in combiner\.stages\[0\]"),
    ({"stages": [{"members": ["a"]}, {"members": ["b"]}]}, {},
     r"combiner\.stages: member 'c' \(members\[2\]\) is in no stage"),
    ({"stages": [{"members": ["a"], "low": 0.9, "high": 0.1}, {"members": ["b", "c"]}]}, {},
     r"combiner\.stages\[0\]\.low: 0\.9 is above combiner\.stages\[0\]\.high \(0\.1\)"),
    ({"stages": [{"members": ["a"]}, {"members": ["b", "c"], "high": 0.9}]}, {},
     r"combiner\.stages\[1\]\.high: the last stage decides every text"),
    ({"stages": [{"members": ["a"], "low": 0.4}, {"members": ["b", "c"]}]}, {"threshold": 0.3},
     r"combiner\.stages\[0\]\.low: 0\.4 is above the decision threshold 0\.3"),
    ({"stages": [{"members": ["a"], "high": 1.5}, {"members": ["b", "c"]}]}, {},
     r"combiner\.stages\[0\]\.high: Input should be less than or equal to 1"),
    ({"stages": [{"members": ["a"]}, {"members": ["b", "c"]}], "combine": "vote"}, {},
     r"combiner\.combine: Input should be 'mean', 'weighted_mean', 'logit_mean' or 'max'"),
    ({"stages": [{"members": ["a"], "lo": 0.1}, {"members": ["b", "c"]}]}, {},
     r"combiner\.stages\[0\]\.lo: unknown field; did you mean 'low'\?"),
])
def test_bad_cascade_configs_name_the_field(head, write_config, combiner, extra, message):
    path = write_config(_config(head, combiner, **extra))
    with pytest.raises(ConfigError, match=message):
        Ensemble.from_config(path)
    result = CliRunner().invoke(cli, ["validate", "--config", str(path)])
    assert result.exit_code == 2 and str(path) in result.output


def test_validate_describes_the_stages(head, write_config):
    path = write_config(_config(head, {"stages": [{"members": ["a"], "low": 0.1, "high": 0.9}, {"members": ["b", "c"]}]}))
    result = CliRunner().invoke(cli, ["validate", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "stage 0: a; combine logit_mean; decides below 0.1 or from 0.9" in result.output
    assert "stage 1: b, c; combine logit_mean; decides every text left" in result.output


# ---- the runtime: later members run only on undecided texts -------------------------------------

@pytest.fixture(scope="module")
def heads(tiny_models, tmp_path_factory) -> dict[str, Path]:
    from siren_ensemble.testing import random_head

    root = tmp_path_factory.mktemp("cascade_heads")
    return {
        "a": random_head(str(tiny_models["llama"]), layers=[0, 2], hidden_size=HIDDEN, max_length=32, seed=11).save(root / "a"),
        "b": random_head(str(tiny_models["qwen3"]), layers=[1, 3], hidden_size=HIDDEN, max_length=32, seed=12).save(root / "b"),
    }


def _members(heads) -> list[dict]:
    return [{"name": "a", "backbone": "llama3", "head": str(heads["a"])},
            {"name": "b", "backbone": "qwen3", "head": str(heads["b"])}]


@pytest.fixture(scope="module")
def plain(heads) -> list:
    """Every member on every text, pooled by logit_mean: what the cascade's last stage computes."""
    config = EnsembleConfig.from_dict({"members": _members(heads), "combiner": {"type": "logit_mean"}})
    return Ensemble.from_config(config).score_batch(MANY_TEXTS)


def _cascade(heads, plain, share_low=0.3, share_high=0.3, **extra) -> Ensemble:
    """A two-stage cascade whose bands decide about the given shares of MANY_TEXTS at stage 0 (threshold between)."""
    a_scores = sorted(result.members["a"] for result in plain)
    low = a_scores[int(share_low * len(a_scores))]
    high = a_scores[-int(share_high * len(a_scores)) - 1] + 1e-12 if share_high else None
    threshold = (low + (high if high is not None else a_scores[-1])) / 2
    stages = [{"members": ["a"], "low": low, **({"high": high} if high is not None else {})}, {"members": ["b"]}]
    return Ensemble.from_config(EnsembleConfig.from_dict({
        "members": _members(heads), "combiner": {"type": "cascade", "stages": stages}, "threshold": threshold, **extra}))


def _count_rows(ensemble: Ensemble, member: str) -> list[int]:
    """Rows the member's head scores, call by call."""
    rows: list[int] = []
    head = ensemble.plans[ensemble.member_names.index(member)].head
    head.register_forward_pre_hook(lambda _module, args: rows.append(len(next(iter(args[0].values())))))
    return rows


def test_later_members_run_only_on_texts_left_undecided(heads, plain):
    ensemble = _cascade(heads, plain)
    rows_a, rows_b = _count_rows(ensemble, "a"), _count_rows(ensemble, "b")
    results = ensemble.score_batch(MANY_TEXTS)
    undecided = [result for result in results if result.decided_by == 1]
    assert 0 < len(undecided) < len(MANY_TEXTS)
    assert sum(rows_a) == len(MANY_TEXTS) and sum(rows_b) == len(undecided)
    stage = ensemble.decision.stages[0]
    for result, reference in zip(results, plain):
        assert result.members["a"] == pytest.approx(reference.members["a"], abs=1e-6)
        if result.decided_by == 0:  # decided on a's score alone; b never ran, and that is not an error
            assert result.members["b"] is None and not result.errors
            assert result.score == pytest.approx(reference.members["a"], abs=1e-6)
            assert result.score < stage.low or result.score >= stage.high
        else:  # the last stage is every member, as without a cascade
            assert result.members["b"] == pytest.approx(reference.members["b"], abs=1e-6)
            assert result.score == pytest.approx(reference.score, abs=1e-6)
        assert result.is_harmful == (result.score >= ensemble.threshold)


def test_no_later_pass_runs_when_the_first_stage_decides_everything(heads, plain):
    everything = sorted(result.members["a"] for result in plain)[-1] + 1e-6  # low above every score
    config = EnsembleConfig.from_dict({"members": _members(heads), "threshold": everything, "combiner": {
        "type": "cascade", "stages": [{"members": ["a"], "low": everything}, {"members": ["b"]}]}})
    ensemble = Ensemble.from_config(config)
    forwards = []
    b_pass = next(shared for shared in ensemble._passes if 1 in shared.member_positions)
    b_pass.backbone.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    results = ensemble.score_batch(MANY_TEXTS)
    assert forwards == [] and {result.decided_by for result in results} == {0}


def test_fail_closed_stops_a_failed_text_and_fail_open_sends_it_on(heads, plain, monkeypatch):
    for policy in ("fail_closed", "fail_open"):
        ensemble = _cascade(heads, plain, on_member_error=policy)
        a_pass = next(shared for shared in ensemble._passes if 0 in shared.member_positions)

        def broken(*args, **kwargs):
            raise RuntimeError("injected fault")

        monkeypatch.setattr(a_pass.backbone, "pooled_states", broken)
        rows_b = _count_rows(ensemble, "b")
        results = ensemble.score_batch(MANY_TEXTS[:4])
        for result in results:
            assert "injected fault" in result.errors["a"]
        if policy == "fail_closed":
            assert all(r.score == 1.0 and r.is_harmful and r.decided_by == 0 for r in results) and rows_b == []
        else:
            assert all(r.decided_by == 1 and r.members["b"] is not None for r in results) and sum(rows_b) == 4
        monkeypatch.undo()


def test_a_stream_decides_each_prefix_through_the_cascade(heads, plain):
    chunks = ["Sure, ", "here is ", "how to ", "do it ", "step by step.", " Then ", "wait."]
    prefixes = ["".join(chunks[:end]) for end in range(1, len(chunks) + 1)]
    config = EnsembleConfig.from_dict({"members": _members(heads), "combiner": {"type": "logit_mean"}})
    a_scores = [result.members["a"] for result in Ensemble.from_config(config).score_batch(
        [f"Tell me something\n{prefix}" for prefix in prefixes])]
    low = float(np.median(a_scores))  # about half the prefixes are decided by a alone
    ensemble = Ensemble.from_config(EnsembleConfig.from_dict({"members": _members(heads), "threshold": low, "combiner": {
        "type": "cascade", "stages": [{"members": ["a"], "low": low}, {"members": ["b"]}]}}))
    rows_b = _count_rows(ensemble, "b")
    stages = []
    with ensemble.stream(prompt="Tell me something") as stream:
        for chunk, prefix in zip(chunks, prefixes):
            fed = stream.feed(chunk)
            want = ensemble.score(prompt="Tell me something", response=prefix)
            assert fed.decided_by == want.decided_by
            assert fed.score == pytest.approx(want.score, abs=1e-5)
            assert fed.members["b"] is None if fed.decided_by == 0 else fed.members["b"] is not None
            stages.append(fed.decided_by)
    assert set(stages) == {0, 1}
    # b scored only the prefixes stage 0 left open (its cache caught up with the tokens it skipped)
    assert len(rows_b) == 2 * stages.count(1)  # once per feed here, once per ensemble.score above


# ---- outputs: CLI jsonl, HTTP, /metrics ---------------------------------------------------------

def test_cli_jsonl_and_table_say_which_stage_decided(heads, plain, write_config):
    ensemble = _cascade(heads, plain)
    path = write_config(json.loads(json.dumps({"members": _members(heads), "threshold": ensemble.threshold,
                                               "combiner": ensemble.config.combiner.model_dump()})))
    result = CliRunner().invoke(cli, ["score", "--config", str(path), *MANY_TEXTS[8:14]])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = ensemble.score_batch(MANY_TEXTS[8:14])
    assert [row["decided_by"] for row in rows] == [want.decided_by for want in expected]
    table = CliRunner().invoke(cli, ["score", "--config", str(path), "--format", "table", *MANY_TEXTS[8:14]])
    assert table.exit_code == 0 and "stage" in table.stdout.splitlines()[0]


def test_the_service_reports_decided_by_and_counts_texts_per_stage(heads, plain):
    from .test_serve import service

    ensemble = _cascade(heads, plain)
    texts = MANY_TEXTS[8:12]
    expected = ensemble.score_batch(texts)
    with service(ensemble) as url:
        moderation = httpx.post(f"{url}/v1/moderations", json={"input": texts}).json()
        single = httpx.post(f"{url}/v1/score", json={"text": texts[0]}).json()
        metrics = httpx.get(f"{url}/metrics").text
    assert [item["siren"]["decided_by"] for item in moderation["results"]] == [want.decided_by for want in expected]
    assert single["decided_by"] == expected[0].decided_by
    counted = {stage: 0 for stage in (0, 1)}
    for want in expected + expected[:1]:
        counted[want.decided_by] += 1
    for stage, count in counted.items():
        line = f'siren_texts_decided_total{{stage="{stage}"}}'
        assert (float(next(l for l in metrics.splitlines() if l.startswith(line)).split()[-1]) if count else 0) == count


# ---- bands fitted on validation -----------------------------------------------------------------

def _synthetic_scores(count=4000, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A cheap noisy member, then two sharper ones: texts far from the boundary are easy for the first."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=count)
    signal = np.where(labels == 1, 1.5, -1.5) + rng.normal(0, 1.2, size=count)
    columns = [signal + rng.normal(0, noise, size=count) for noise in (1.5, 0.6, 0.6)]
    return np.stack([sigmoid(column) for column in columns], axis=1), labels


def test_fitted_bands_keep_recall_within_tolerance_and_decide_many_texts_early():
    scores, labels = _synthetic_scores()
    stages = [{"members": ["a"]}, {"members": ["b"]}, {"members": ["c"]}]
    path = _path(stages)
    threshold = 0.5
    fit = fit_bands(path, scores, labels, threshold)
    reference = path.without_bands().scores(scores) >= threshold
    verdict = path.with_bands(fit.bands).scores(scores) >= threshold
    recall = lambda v: v[labels == 1].mean()  # noqa: E731
    fpr = lambda v: v[labels == 0].mean()  # noqa: E731
    assert recall(verdict) >= recall(reference) - 0.005 and fpr(verdict) <= fpr(reference) + 0.005
    assert (verdict == reference).mean() >= 0.99
    assert fit.recall == pytest.approx(recall(verdict)) and fit.agreement == pytest.approx((verdict == reference).mean())
    assert fit.decided_share[0] > 0.2 and sum(fit.decided_share) == pytest.approx(1.0)
    assert fit.bands[-1] == (None, None)
    for low, high in fit.bands[:-1]:
        assert (low is None or low <= threshold) and (high is None or high >= threshold)
    # A larger budget never decides fewer texts early; none decides only what cannot change a verdict.
    looser = fit_bands(path, scores, labels, threshold, BandRule(0.02, 0.02, 0.95))
    assert looser.decided_share[0] >= fit.decided_share[0]
    strict = fit_bands(path, scores, labels, threshold, BandRule(0.0, 0.0, 1.0))
    assert (path.with_bands(strict.bands).scores(scores) >= threshold).tolist() == reference.tolist()
    # On unseen texts from the same distribution, the loss stays near the tolerance.
    test_scores, test_labels = _synthetic_scores(seed=1)
    test_reference = path.without_bands().scores(test_scores) >= threshold
    test_verdict = path.with_bands(fit.bands).scores(test_scores) >= threshold
    assert test_verdict[test_labels == 1].mean() >= test_reference[test_labels == 1].mean() - 0.015


def test_calibrate_writes_bands_that_the_runtime_then_uses(heads, synthetic_data, write_config, tmp_path):
    stages = [{"members": ["a"], "low": 0.9999, "high": 0.99999}, {"members": ["b"]}]  # refitted: not read
    path = write_config({"members": _members(heads), "combiner": {"type": "cascade", "stages": stages}, "threshold": 0.99995})
    written = tmp_path / "calibrated.yaml"
    result = CliRunner().invoke(cli, ["calibrate", "--config", str(path), "--data", str(synthetic_data),
                                      "--target-recall", "0.9", "--write-config", str(written), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    cascade = summary["cascade"]
    assert cascade["recall"] >= cascade["reference_recall"] - 0.005 and cascade["agreement"] >= 0.99
    raw = yaml.safe_load(written.read_text())
    assert raw["threshold"] == pytest.approx(summary["threshold"], abs=1e-6)
    for stage, band in zip(raw["combiner"]["stages"], cascade["bands"]):
        for side in ("low", "high"):
            assert stage.get(side) == (None if band[side] is None else pytest.approx(band[side], abs=1e-6))
    config = EnsembleConfig.from_dict(raw, base_dir=written.parent)
    validate_plan(config)  # the bands bracket the rounded threshold
    report = calibrate(path, synthetic_data, 0.9, cache_dir=tmp_path / "cache")
    assert report["validation"]["recall"] == pytest.approx(cascade["recall"], abs=1e-6)  # the cascade's own metrics


def test_written_bands_never_cross_the_rounded_threshold(tmp_path):
    source = tmp_path / "c.yaml"
    source.write_text(yaml.safe_dump({"members": [], "combiner": {"type": "cascade", "stages": [
        {"members": ["a"], "low": 0.1}, {"members": ["b"]}]}}))
    out = write_calibrated_config(source, tmp_path / "out.yaml", 0.4607154, None,
                                  {"bands": [{"low": 0.4607154, "high": 0.4607153}, {"low": None, "high": None}]})
    raw = yaml.safe_load(out.read_text())
    assert raw["threshold"] == 0.460715
    assert raw["combiner"]["stages"][0] == {"members": ["a"], "low": 0.460715, "high": 0.4607153}
    assert raw["combiner"]["stages"][1] == {"members": ["b"]}


def test_evaluate_reports_the_cascade_row_and_the_share_per_stage(heads, synthetic_data, write_config, tmp_path):
    from siren_ensemble.evaluation.evaluate import EVERY_MEMBER_ROW, EvaluateOptions, evaluate
    from siren_ensemble.evaluation.tables import render

    report = calibrate(write_config({"members": _members(heads), "combiner": {
        "type": "cascade", "stages": [{"members": ["a"]}, {"members": ["b"]}]}}), synthetic_data, 0.9, cache_dir=tmp_path / "cache")
    bands = report["cascade"]["bands"]
    stages = [{"members": ["a"], **{k: v for k, v in bands[0].items() if v is not None}}, {"members": ["b"]}]
    config = write_config({"members": _members(heads), "threshold": report["threshold"],
                           "combiner": {"type": "cascade", "stages": stages}}, name="fitted.yaml")
    options = EvaluateOptions(split="validation", baselines=False, leave_one_source_out=False, stackers=False)
    evaluated = evaluate(config, synthetic_data, options, cache_dir=tmp_path / "cache")
    assert {"ensemble (config)", EVERY_MEMBER_ROW} <= set(evaluated["scorers"])
    cascade = evaluated["cascade"]
    assert cascade["decided_share"] == pytest.approx(report["cascade"]["decided_share"], abs=1e-6)
    assert cascade["recall"] == pytest.approx(report["cascade"]["recall"], abs=1e-6)
    assert "## Cascade (validation)" in render(evaluated)
