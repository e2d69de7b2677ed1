"""One local Ray instance per test module (2 CPUs), the tiny demo ensemble, and a switch that kills an actor.

Workers read the environment given here, not the one the conftest fixtures patch in this process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from siren_ensemble.cache import FEATURE_CACHE_ENV
from siren_ensemble.plugins import LOAD_PLUGINS_ENV
from siren_ensemble.precision import CPU_BF16_ENV

#: A text that kills the Ray worker scoring it, the first time only (``arm_kill_switch``).
KILL_TEXT = "this text kills the actor that scores it, once"
KILL_MARKER_ENV = "SIREN_TEST_KILL_MARKER"
#: Workers import siren_ensemble from here, the checkout under test (not another install of it).
REPOSITORY = Path(__file__).parents[1]


def arm_kill_switch() -> None:
    """Ray's ``worker_process_setup_hook``: in every worker, ``score_batch`` ends the worker's process on
    ``KILL_TEXT`` if the marker file does not exist yet (and writes it first), as a crash mid-batch would."""
    from siren_ensemble.ensemble import Ensemble

    marker = os.environ.get(KILL_MARKER_ENV)
    score_batch = Ensemble.score_batch

    def score_batch_or_die(self, texts, *args, **kwargs):
        if marker and KILL_TEXT in texts and not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)
        return score_batch(self, texts, *args, **kwargs)

    Ensemble.score_batch = score_batch_or_die


def start_ray(tmp_path: Path):
    """``ray.init`` on 2 CPUs with the test environment; returns the kill switch's marker path."""
    ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install 'siren-ensemble[ray]')")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests package
    marker = tmp_path / "actor-killed"
    env = {CPU_BF16_ENV: "0", LOAD_PLUGINS_ENV: "", FEATURE_CACHE_ENV: str(tmp_path / "features"), KILL_MARKER_ENV: str(marker),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY)}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False,
             runtime_env={"env_vars": env, "worker_process_setup_hook": arm_kill_switch})
    return marker
