"""bench/defaults.py (old default vs new default): the old side's derivation, and the whole measurement on a tiny ensemble."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from siren_ensemble.testing import TINY_DIMENSIONS, build_tiny_model, random_head

from .conftest import HIDDEN

BENCH = Path(__file__).resolve().parents[1] / "bench" / "defaults.py"


@pytest.fixture(scope="module")
def defaults():
    spec = importlib.util.spec_from_file_location("bench_defaults", BENCH)
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)  # puts bench/ on sys.path for its `common`
    yield module
    sys.path[:] = path
    for name in (spec.name, "common"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def tiny_configs(tmp_path_factory) -> dict[str, Path]:
    """A plain full-depth config (the old default's stand-in) and a cascade whose first stage reads half the depth."""
    root = tmp_path_factory.mktemp("bench-defaults")
    build_tiny_model(root / "model", "llama", seed=0)
    depth = TINY_DIMENSIONS["num_hidden_layers"]
    for name, layers, seed in (("full-a", range(depth), 1), ("full-b", range(depth), 2), ("cut-a", [0, 1], 3)):
        random_head("model", layers=layers, hidden_size=HIDDEN, seed=seed).save(root / "heads" / name)

    def member(name: str, head: str) -> dict:
        return {"name": name, "backbone": "llama3", "model": "model", "head": f"heads/{head}"}  # dtype: auto

    old = {"members": [member("a", "full-a"), member("b", "full-b")], "combiner": {"type": "logit_mean"}, "threshold": 0.5}
    new = {
        "members": [member("a", "cut-a"), member("b", "full-b")],
        "combiner": {"type": "cascade", "combine": "logit_mean",
                     "stages": [{"members": ["a"], "low": 0.4, "high": 0.6}, {"members": ["b"]}]},
        "threshold": 0.5,
    }
    paths = {}
    for name, config in (("old", old), ("new", new)):
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(config, sort_keys=False))
    return paths


def test_old_default_is_float32_with_every_member_run(defaults, tiny_configs):
    raw = yaml.safe_load(tiny_configs["new"].read_text())
    before = yaml.safe_dump(raw)
    old = defaults.old_default(raw)
    assert yaml.safe_dump(raw) == before  # the config read is not changed
    assert [member["dtype"] for member in old["members"]] == ["float32", "float32"]
    assert old["combiner"] == {"type": "logit_mean"}  # the cascade's own `combine`, over every member
    assert old["threshold"] == raw["threshold"] and [m["head"] for m in old["members"]] == [m["head"] for m in raw["members"]]

    raw["combiner"] = {"type": "cascade", "stages": raw["combiner"]["stages"]}  # `combine` left to its default
    assert defaults.old_default(raw)["combiner"] == {"type": "logit_mean"}
    plain = {**raw, "combiner": {"type": "weighted_mean"}}
    assert defaults.old_default(plain)["combiner"] == {"type": "weighted_mean"}  # not a cascade: kept

    side = defaults.old_side(tiny_configs["new"])
    config = side.config()  # validates, relative paths from the config's directory
    assert config.combiner.type == "logit_mean"
    assert {member.dtype for member in config.members} == {"float32"}
    assert side.base_dir == tiny_configs["new"].parent


def test_the_measurement_end_to_end_on_a_tiny_ensemble(defaults, tiny_configs):
    records = defaults.sample_records(None, 8, seed=1)
    assert {record.level for record in records} == {"prompt", "response"}
    assert defaults.sample_records(None, 8, seed=1) == records  # seeded
    comparison = defaults.measure(defaults.old_side(tiny_configs["old"]), defaults.read_side(tiny_configs["new"]), records,
                                  repeats=2, rounds=1, threads=1, log=lambda line: None)
    c = comparison
    assert c.texts == 8 and c.prompts + c.responses == 8 and c.responses > 0
    assert all(c.texts_per_s[side] > 0 and c.seconds[side] > 0 for side in ("old", "new"))
    for side in ("old", "new"):
        assert 0 < c.latency_ms[side]["p50"] <= c.latency_ms[side]["p99"]
        assert c.rss[side]["peak_rss_mib"] > 50 and c.rss[side]["load_s"] > 0
        assert 0 <= c.quality[side]["flagged"] <= 8
        assert all(c.quality[side][key] is None or 0 <= c.quality[side][key] <= 1 for key in ("recall", "fpr", "f1"))
    assert [row[0] for row in c.stages] == ["0: a", "1: b"]
    assert sum(row[1] for row in c.stages) == 8
    assert sum(row[2] for row in c.stages) == pytest.approx(1.0)
    assert sum(row[3] for row in c.stages) == pytest.approx(1.0) and sum(row[4] for row in c.stages) == pytest.approx(1.0)
    assert 0 <= c.differing <= 8 and c.newly_flagged + c.newly_passed == c.differing
    assert c.dtypes["old"] == {"a": "float32 (set in the config)", "b": "float32 (set in the config)"}
    assert all(dtype.startswith("float32 (auto: ") for dtype in c.dtypes["new"].values())  # tests pin auto to float32
    assert c.depth == {"old": {"a": "4/4", "b": "4/4"}, "new": {"a": "2/4", "b": "4/4"}} and not c.old_not_full_depth

    text = defaults.report(comparison)
    assert text.startswith("CPU: ")
    for part in ("### Speed and memory: old default vs new default", "| measure | old | new | new vs old (old / new cost) |",
                 "texts/s, 8 texts", "p50 ms", "p99 ms", "peak RSS MiB", "### Texts decided per stage, new side, 8 texts",
                 "| 0: a |", "### Quality on the same 8 records", "Decisions that differ:"):
        assert part in text


def test_the_command_on_split_data_writes_its_tables(defaults, tiny_configs, synthetic_data, tmp_path):
    output = tmp_path / "defaults.md"
    text = defaults.main(["--new-config", str(tiny_configs["old"]), "--old-config", str(tiny_configs["new"]),
                          "--data", str(synthetic_data), "--texts", "5", "--repeats", "2", "--rounds", "1", "--no-rss",
                          "--output", str(output)])
    assert output.read_text() == text
    assert "5 texts (5 prompts, 0 prompt+response pairs)" in text
    assert "| every member (not a cascade) | 5 | 100.0% |" in text  # the new side here is a plain combiner
    assert "WARNING: on the old side a" in text  # derived from the cascade config, whose `a` reads half the depth
    assert "peak RSS" not in text
