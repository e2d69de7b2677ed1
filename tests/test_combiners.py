"""Each combiner against hand-computed expectations."""

import json
from pathlib import Path

import numpy as np
import pytest

from siren_ensemble import ArtifactError, ConfigError
from siren_ensemble.combiners import LogitMeanCombiner, MaxCombiner, MeanCombiner, MemberView, VoteCombiner, VoteOptions, WeightedMeanCombiner
from siren_ensemble.combiners import NoOptions
from siren_ensemble.stacking import StackerParams, StackingCombiner, StackingOptions, fit_stacker

MEMBERS = [MemberView("a", weight=1.0, threshold=0.5), MemberView("b", weight=3.0, threshold=0.2), MemberView("c", weight=0.0, threshold=0.9)]
SCORES = np.array([
    [0.2, 0.4, 0.6],
    [0.9, 0.1, 0.95],
    [0.0, 0.0, 0.0],
])


def test_mean():
    combined = MeanCombiner(NoOptions(), MEMBERS, Path(".")).combine(SCORES)
    np.testing.assert_allclose(combined, [0.4, 0.65, 0.0])


def test_weighted_mean_uses_member_weights():
    combined = WeightedMeanCombiner(NoOptions(), MEMBERS, Path(".")).combine(SCORES)
    # weights 1, 3, 0 -> (0.2 + 1.2) / 4 and (0.9 + 0.3) / 4
    np.testing.assert_allclose(combined, [0.35, 0.3, 0.0])


def test_weighted_mean_needs_positive_total_weight():
    with pytest.raises(ConfigError, match="positive total weight"):
        WeightedMeanCombiner(NoOptions(), [MemberView("a", 0.0, 0.5)], Path("."))


def test_max():
    np.testing.assert_allclose(MaxCombiner(NoOptions(), MEMBERS, Path(".")).combine(SCORES), [0.6, 0.95, 0.0])


@pytest.mark.parametrize("options,threshold", [
    (VoteOptions(rule="any"), 1 / 3),
    (VoteOptions(rule="majority"), 2 / 3),
    (VoteOptions(rule="k", k=3), 1.0),
])
def test_vote_uses_each_members_threshold(options, threshold):
    vote = VoteCombiner(options, MEMBERS, Path("."))
    combined = vote.combine(SCORES)
    # row 0: a 0.2<0.5 no, b 0.4>=0.2 yes, c 0.6<0.9 no -> 1 vote; row 1: a yes, b no, c yes -> 2; row 2: none
    np.testing.assert_allclose(combined, [1 / 3, 2 / 3, 0.0])
    assert vote.default_threshold() == pytest.approx(threshold)
    decisions = combined >= vote.default_threshold()
    expected = {"any": [True, True, False], "majority": [False, True, False], "k": [False, False, False]}[options.rule]
    assert decisions.tolist() == expected


def test_vote_majority_of_four_needs_three():
    members = [MemberView(str(i), 1.0, 0.5) for i in range(4)]
    vote = VoteCombiner(VoteOptions(rule="majority"), members, Path("."))
    two_votes = vote.combine(np.array([[0.9, 0.9, 0.1, 0.1]]))
    assert not (two_votes >= vote.default_threshold()).any()


@pytest.mark.parametrize("options,message", [
    (VoteOptions(rule="k"), "combiner.k: required"),
    (VoteOptions(rule="k", k=4), "between 1 and the number of members"),
    (VoteOptions(rule="any", k=2), "only used with rule 'k'"),
])
def test_vote_option_errors_name_the_field(options, message):
    with pytest.raises(ConfigError, match=message):
        VoteCombiner(options, MEMBERS, Path("."))


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_stacking_is_logistic_regression_on_member_logits(tmp_path, suffix):
    params = StackerParams(members=("b", "a", "c"), coefficients=(2.0, 1.0, -0.5), intercept=0.25)
    path = params.save(tmp_path / f"stack{suffix}")
    stacking = StackingCombiner(StackingOptions(params=path.name), MEMBERS, tmp_path)
    logit = lambda p: np.log(p / (1 - p))
    row = SCORES[0]
    # the file's member order differs from the config's: coefficients follow the names
    z = 0.25 + 1.0 * logit(row[0]) + 2.0 * logit(row[1]) - 0.5 * logit(row[2])
    assert stacking.combine(SCORES[:1])[0] == pytest.approx(1 / (1 + np.exp(-z)))
    # scores of exactly 0 are clipped, not turned into -inf
    assert np.isfinite(stacking.combine(SCORES[2:])).all()


def test_stacking_refuses_params_fitted_for_other_members(tmp_path):
    StackerParams(members=("a", "x"), coefficients=(1.0, 1.0), intercept=0.0).save(tmp_path / "s.json")
    with pytest.raises(ConfigError, match=r"fitted for members \['a', 'x'\]"):
        StackingCombiner(StackingOptions(params="s.json"), MEMBERS, tmp_path)


def test_stacking_missing_or_broken_file(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        StackingCombiner(StackingOptions(params="none.json"), MEMBERS, tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"members": ["a"]}))
    with pytest.raises(ArtifactError, match="not a stacking parameters file"):
        StackingCombiner(StackingOptions(params="bad.json"), MEMBERS, tmp_path)


def test_fit_stacker_learns_which_member_to_trust():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=400)
    informative = np.clip(labels * 0.8 + 0.1 + rng.normal(0, 0.05, 400), 0.01, 0.99)
    noise = rng.uniform(0.01, 0.99, size=400)
    params = fit_stacker(np.column_stack([noise, informative]), labels, ["noise", "good"])
    assert params.coefficients[1] > 1.0 > abs(params.coefficients[0])
    predictions = params.predict(np.column_stack([noise, informative])) >= 0.5
    assert (predictions == labels).mean() > 0.95


def test_fit_stacker_needs_both_classes():
    with pytest.raises(ConfigError, match="both classes"):
        fit_stacker(np.array([[0.1], [0.2]]), [1, 1], ["a"])


def test_logit_mean_pools_log_odds_with_member_weights():
    members = [MemberView("a", 1.0, 0.5), MemberView("b", 3.0, 0.5)]
    combiner = LogitMeanCombiner(NoOptions(), members, Path("."))
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    scores = np.array([[0.9, 0.1], [0.99, 0.5], [0.5, 0.5]])
    expected = 1 / (1 + np.exp(-(0.25 * logit(scores[:, 0]) + 0.75 * logit(scores[:, 1]))))
    assert combiner.combine(scores) == pytest.approx(expected)
    # One confident member among unsure ones moves the pooled score less than max does.
    even = LogitMeanCombiner(NoOptions(), [MemberView(n, 1.0, 0.5) for n in "abc"], Path("."))
    assert even.combine(np.array([[0.97, 0.2, 0.2]]))[0] < 0.6 < MaxCombiner(NoOptions(), MEMBERS, Path(".")).combine(np.array([[0.97, 0.2, 0.2]]))[0]
    with pytest.raises(ConfigError, match="positive total weight"):
        LogitMeanCombiner(NoOptions(), [MemberView("a", 0.0, 0.5)], Path("."))


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_stacking_interactions_and_threshold_survive_the_file(tmp_path, suffix):
    params = StackerParams(members=("a", "b", "c"), coefficients=(1.0, 0.5, -0.2, 0.3), intercept=-0.1,
                           interactions=(("a", "c"),), threshold=0.42)
    path = params.save(tmp_path / f"stack{suffix}")
    stacking = StackingCombiner(StackingOptions(params=path.name), [MEMBERS[2], MEMBERS[0], MEMBERS[1]], tmp_path)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    a, b, c = SCORES[0]
    z = -0.1 + 1.0 * logit(a) + 0.5 * logit(b) - 0.2 * logit(c) + 0.3 * logit(a) * logit(c)
    # config order (c, a, b) differs from the file's: the columns follow the names
    assert stacking.combine(np.array([[c, a, b]]))[0] == pytest.approx(1 / (1 + np.exp(-z)))
    assert stacking.default_threshold() == 0.42


def test_stacking_file_with_unknown_interaction_is_refused(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"members": ["a", "b"], "coefficients": [1, 1, 1], "intercept": 0,
                                                 "interactions": [["a", "z"]]}))
    with pytest.raises(ArtifactError, match="interactions: 'z' is not one of the members"):
        StackerParams.load(tmp_path / "s.json")


def test_fit_stacker_with_interactions_learns_agreement():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=600)
    a = np.clip(labels * 0.6 + 0.2 + rng.normal(0, 0.15, 600), 0.01, 0.99)
    b = np.clip(labels * 0.6 + 0.2 + rng.normal(0, 0.15, 600), 0.01, 0.99)
    params = fit_stacker(np.column_stack([a, b]), labels, ["a", "b"], interactions=True)
    assert params.interactions == (("a", "b"),) and len(params.coefficients) == 3
    assert ((params.predict(np.column_stack([a, b])) >= 0.5) == labels).mean() > 0.85
