"""Cross-fitting: every record is predicted by a model fitted without it (and without its group)."""

import numpy as np
import pytest

from siren_ensemble.evaluation.crossfit import cross_fitted_stacker
from siren_ensemble.stacking import fit_stacker
from siren_ensemble.training.crossfit import out_of_fold


def test_out_of_fold_never_predicts_a_record_or_its_group_from_a_model_that_saw_it():
    labels = np.array([0, 1] * 30)
    groups = np.array([f"g{i // 4}" for i in range(60)])  # near-duplicates come in fours
    seen_by_model = {}

    def fit_predict(fit_rows, held_out):
        model = len(seen_by_model)
        seen_by_model[model] = set(fit_rows.tolist())
        assert not set(groups[fit_rows]) & set(groups[held_out])
        return np.full(len(held_out), float(model))

    predictions = out_of_fold(labels, groups, fit_predict, folds=3, seed=0)
    assert len(seen_by_model) == 3 and not np.isnan(predictions).any()
    for row, model in enumerate(predictions.astype(int)):
        assert row not in seen_by_model[model]


def test_a_cross_fitted_stacker_predicts_the_deploy_inputs_of_records_it_did_not_see():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    fit_inputs = np.clip(np.column_stack([labels * 0.6 + 0.2 + rng.normal(0, 0.2, 300), rng.uniform(0, 1, 300)]), 0.01, 0.99)
    deploy = fit_inputs.copy()
    deploy[200:] = np.clip(deploy[200:] + 0.05, 0.01, 0.99)  # what the final heads say on "validation"
    groups = np.arange(300).astype(str)
    fitted = cross_fitted_stacker(fit_inputs, deploy, labels, groups, ["good", "noise"], folds=3, seed=0)
    assert fitted.params.coefficients == pytest.approx(fit_stacker(fit_inputs, labels, ["good", "noise"]).coefficients)
    assert not np.isnan(fitted.out_of_fold).any()
    # Out-of-fold predictions differ from the in-sample stacker's, and come from the deploy inputs.
    assert not np.allclose(fitted.out_of_fold, fitted.params.predict(fit_inputs))
    assert ((fitted.out_of_fold >= 0.5) == labels).mean() > 0.8
