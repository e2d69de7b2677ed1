"""A non-finite number anywhere on the decision path is a failure under the policy, never "not harmful";
numeric fields of configs and artifacts are finite (and bounded) when they load."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from siren_ensemble import Ensemble, MemberError
from siren_ensemble.calibration import Calibration
from siren_ensemble.cli import cli
from siren_ensemble.combiners import Combiner, MeanCombiner, NoOptions
from siren_ensemble.config import EnsembleConfig
from siren_ensemble.decision import ENSEMBLE_ERROR_KEY, DecisionPath
from siren_ensemble.errors import ArtifactError, ConfigError
from siren_ensemble.head import CONFIG_FILE, SirenHead
from siren_ensemble.stacking import StackerParams

NAN_CALIBRATION = Calibration("platt", {"slope": float("nan"), "intercept": 0.0})


class NaNCombiner(Combiner):
    name = "nan"

    def combine(self, scores):
        return np.full(len(scores), np.nan)


@pytest.fixture
def head(tiny_models, write_head):
    return write_head(tiny_models["llama"], max_length=16)


def make(head, write_config, **options) -> Ensemble:
    return Ensemble.from_config(write_config({"members": [
        {"name": "a", "backbone": "llama3", "head": str(head)},
        {"name": "b", "backbone": "llama3", "head": str(head)},
    ], **options}))


def broken(ensemble: Ensemble, stage: str) -> Ensemble:
    path = ensemble.decision
    if stage == "combiner":
        path = replace(path, combiner=NaNCombiner(None, [], None))
    elif stage == "calibration":
        path = replace(path, calibration=NAN_CALIBRATION)
    else:
        path = replace(path, member_calibrations=(None, NAN_CALIBRATION))
    ensemble.decision = path
    return ensemble


@pytest.mark.parametrize("stage, key", [("combiner", ENSEMBLE_ERROR_KEY), ("calibration", ENSEMBLE_ERROR_KEY), ("member", "b")])
def test_a_non_finite_score_at_any_stage_fails_closed(head, write_config, stage, key):
    ensemble = broken(make(head, write_config, threshold=0.99), stage)
    result = ensemble.score("What is the capital of France?")
    assert result.is_harmful is True and result.score == 1.0
    assert "non-finite" in result.errors[key]


def test_fail_open_answers_a_non_finite_ensemble_score_with_a_number_and_the_reason(head, write_config):
    ensemble = broken(make(head, write_config, on_member_error="fail_open"), "combiner")
    result = ensemble.score("hello")
    assert result.score == 0.0 and result.is_harmful is False
    assert "non-finite" in result.errors[ENSEMBLE_ERROR_KEY]


def test_fail_open_counts_a_member_whose_calibration_is_non_finite_as_benign(head, write_config):
    ensemble = make(head, write_config, on_member_error="fail_open")
    healthy = ensemble.score("hello")
    result = broken(ensemble, "member").score("hello")
    assert result.score == pytest.approx(healthy.members["a"] / 2)
    assert "b" in result.errors and "a" not in result.errors


def test_raise_policy_raises_on_a_non_finite_ensemble_score(head, write_config):
    ensemble = broken(make(head, write_config, on_member_error="raise"), "combiner")
    with pytest.raises(MemberError, match="text 0: .*non-finite"):
        ensemble.score("hello")


def test_decide_fails_non_finite_member_scores_it_is_handed():
    path = DecisionPath(("a", "b"), (None, None), MeanCombiner(NoOptions(), [], None), None, 0.5)
    decisions = path.decide(np.array([[0.2, np.inf], [0.2, 0.1]]), np.array([False, False]))
    assert list(decisions.failed) == [True, False]
    assert list(decisions.scores) == [1.0, pytest.approx(0.15)]
    assert "b" in decisions.errors[0] and decisions.errors[1] == {}


def test_cli_output_is_strict_json_and_flags_a_non_finite_score(head, write_config, monkeypatch):
    config = write_config({"members": [{"name": "a", "backbone": "llama3", "head": str(head)}]})
    original = DecisionPath.from_config.__func__

    def with_nan_combiner(cls, *args, **kwargs):
        return replace(original(cls, *args, **kwargs), combiner=NaNCombiner(None, [], None))

    monkeypatch.setattr(DecisionPath, "from_config", classmethod(with_nan_combiner))
    result = CliRunner().invoke(cli, ["score", "--config", str(config), "hello"])
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise AssertionError(f"{constant} in the output")

    row = json.loads(result.stdout, parse_constant=refuse)
    assert row["is_harmful"] is True and row["score"] == 1.0


# ---- validation at load time ---------------------------------------------------------------------

@pytest.mark.parametrize("weight", [float("inf"), float("nan")])
def test_member_weight_must_be_finite(tmp_path, weight):
    with pytest.raises(ConfigError, match=r"members\[0\]\.weight"):
        EnsembleConfig.from_dict({"members": [{"name": "a", "backbone": "llama3", "head": str(tmp_path), "weight": weight}]})


@pytest.mark.parametrize("change, field", [
    ({"coefficients": [float("nan"), 1.0]}, r"coefficients\[0\]: expected a finite number"),
    ({"coefficients": ["1", 1.0]}, r"coefficients\[0\]: expected a finite number"),
    ({"intercept": float("inf")}, "intercept: expected a finite number"),
    ({"intercept": "abc"}, "intercept: expected a finite number"),
    ({"threshold": float("nan")}, "threshold: expected a finite number"),
    ({"threshold": True}, "threshold: expected a finite number"),
])
def test_stacker_numbers_must_be_finite(tmp_path, change, field):
    path = tmp_path / "stacker.json"
    payload = {"format": "x", "members": ["a", "b"], "coefficients": [1.0, 2.0], "intercept": 0.0, **change}
    path.write_text(json.dumps(payload))  # json writes NaN and Infinity, which json.loads reads back
    with pytest.raises(ArtifactError, match=field) as raised:
        StackerParams.load(path)
    assert str(raised.value).startswith(str(path))


def test_stacker_safetensors_with_a_nan_coefficient_is_refused(tmp_path):
    path = StackerParams(("a", "b"), (float("nan"), 1.0), 0.0).save(tmp_path / "stacker.safetensors")
    with pytest.raises(ArtifactError, match=r"coefficients\[0\]"):
        StackerParams.load(path)


@pytest.mark.parametrize("payload, field", [
    ({"method": "platt", "slope": "abc", "intercept": 0.0}, "slope: expected a finite number, got 'abc'"),
    ({"method": "platt", "slope": 1.0, "intercept": float("nan")}, "intercept: expected a finite number"),
    ({"method": "platt", "slope": True, "intercept": 0.0}, "slope: expected a finite number"),
    ({"method": "isotonic", "x": [0.0, float("inf")], "y": [0.0, 1.0]}, r"x\[1\]: expected a finite number"),
    ({"method": "isotonic", "x": [0.0, 1.0], "y": [0.0, "1"]}, r"y\[1\]: expected a finite number"),
    ({"method": "isotonic", "x": "01", "y": [0.0, 1.0]}, "x: expected a list of numbers"),
    ({"method": "isotonic", "x": [0.5, 0.1], "y": [0.0, 1.0]}, "x: must not decrease"),
    ({"method": "isotonic", "x": [0.0, 1.0], "y": [0.0, 2.0]}, r"y\[1\]: expected a number between 0 and 1"),
])
def test_calibration_numbers_are_checked_when_the_file_loads(tmp_path, payload, field):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(ArtifactError, match=field) as raised:
        Calibration.load(path)
    assert str(raised.value).startswith(str(path))


@pytest.mark.parametrize("change, field", [
    (lambda d: d["mlp"].update(layer_dims=[0, 8]), r"mlp\.layer_dims\[0\]"),
    (lambda d: d["mlp"].update(layer_dims=[65537, 8]), r"mlp\.layer_dims\[0\]"),
    (lambda d: d["mlp"].update(dropout_rates=[1.0, 0.0]), r"mlp\.dropout_rates\[0\]"),
    (lambda d: d["mlp"].update(dropout_rates=[-0.1, 0.0]), r"mlp\.dropout_rates\[0\]"),
    (lambda d: d["mlp"].update(layer_dims=[65536] * 20, dropout_rates=[0.0] * 20), "mlp.layer_dims"),
    (lambda d: d["siren_module"].update(layer_weights={"0": float("nan")}), r"siren_module\.layer_weights\.0"),
    (lambda d: d["siren_module"].update(layer_weights={"-1": 1.0}), r"siren_module\.layer_weights"),
    (lambda d: d["siren_module"].update(selected_layers=[-1, 2]), r"siren_module\.selected_layers"),
    (lambda d: d["mlp"].update(input_dim=2_000_000), r"mlp\.input_dim"),
])
def test_head_numbers_are_bounded(head, change, field, monkeypatch):
    import siren_ensemble.head as head_module

    # Checked before the MLP is built: building an over-bound one could take all the machine's memory.
    monkeypatch.setattr(head_module, "SirenMLP", lambda spec: pytest.fail("built the MLP of a head that fails its checks"))
    config = json.loads((head / CONFIG_FILE).read_text())
    change(config)
    (head / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=field) as raised:
        SirenHead.load(head)
    assert str(raised.value).startswith(str(head / CONFIG_FILE))


def test_a_head_too_big_to_build_is_refused_before_it_is_built(head, monkeypatch):
    import siren_ensemble.head as head_module

    config = json.loads((head / CONFIG_FILE).read_text())
    config["mlp"].update(layer_dims=[65536, 65536, 65536], dropout_rates=[0.0, 0.0, 0.0])
    (head / CONFIG_FILE).write_text(json.dumps(config))
    monkeypatch.setattr(head_module, "SirenMLP", lambda spec: pytest.fail("built a head over the parameter bound"))
    with pytest.raises(ArtifactError, match="mlp.layer_dims: .* parameters, over the limit"):
        SirenHead.load(head)
