"""bench/load_service.py on the tiny demo models: a small run finds nothing lost and nothing wrong."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

BENCH = Path(__file__).parents[1] / "bench" / "load_service.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("load_service", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_the_workload_mixes_kinds_and_streams_rebuild_their_response():
    bench = load_bench()
    work = bench.build_workload(300)
    assert {item.kind for item in work} == {"prompt", "response", "stream"}
    for item in work:
        if item.kind == "stream":
            assert "".join(item.chunks) in bench.RESPONSES and len(item.chunks) >= 2


def test_a_small_load_on_the_tiny_ensemble_loses_nothing_and_answers_as_alone(tmp_path):
    from siren_ensemble.testing import write_demo_ensemble

    bench = load_bench()
    config = write_demo_ensemble(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["combiner"] = {"type": "mean"}  # a continuous score, so the 1e-5 comparison means something
    config.write_text(yaml.safe_dump(raw))
    report = bench.run(str(config), requests=80, concurrency=8, duration_s=120)
    bench.print_report(report)
    assert report["ok"], report
    assert report["sent"] == report["answered"] == 80 and report["lost"] == report["wrong"] == report["verdict_flips"] == 0
    assert all(report["kinds_sent"][kind] > 0 for kind in ("prompt", "response", "stream"))
    assert report["latency_ms"]["stream chunk"]["n"] > report["kinds_sent"]["stream"]  # one per chunk


def test_the_checker_counts_a_different_score_verdict_or_a_policy_answer_as_wrong():
    bench = load_bench()
    outcome = bench.Outcome()
    checker = bench.Checker({("p", None): (0.5, True)}, 1e-5, outcome)
    checker.check("same", ("p", None), 0.500001, True, {})
    assert outcome.wrong == []
    checker.check("off", ("p", None), 0.50002, True, {})
    checker.check("verdict", ("p", None), 0.5, False, {})
    checker.check("policy", ("p", None), 0.5, True, {"service": "timeout"})
    assert [problem.split(":")[0] for problem in outcome.wrong] == ["off", "verdict", "policy"]


def test_the_checker_counts_verdict_flips_apart_from_score_drift():
    bench = load_bench()
    outcome = bench.Outcome()
    checker = bench.Checker({"a": (0.40, True), "b": (0.30, False)}, tolerance=1e-5, outcome=outcome)
    checker.check("same", "a", 0.40, True, {})
    checker.check("drift", "a", 0.41, True, {})        # score moved, verdict kept
    checker.check("flip", "b", 0.31, True, {})         # verdict changed
    assert len(outcome.wrong) == 2 and len(outcome.verdict_flips) == 1 and outcome.verdict_flips[0].startswith("flip")
    assert abs(outcome.max_difference - 0.01) < 1e-9
