"""Corpus scoring on Ray Data (a local instance on 2 CPUs, the tiny demo ensemble): the scores of one process,
in order, every row once, bad rows answered and reported one by one, a killed actor replaced."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install 'siren-ensemble[ray]')")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from siren_ensemble import Ensemble  # noqa: E402
from siren_ensemble.cli import cli  # noqa: E402
from siren_ensemble.inputs import json_object, record_of  # noqa: E402
from siren_ensemble.ray.rows import score_line  # noqa: E402
from siren_ensemble.testing import write_demo_ensemble  # noqa: E402

from .conftest import TEXTS  # noqa: E402
from .ray_cluster import KILL_TEXT, start_ray  # noqa: E402

pytestmark = pytest.mark.ray

GOOD_LINES = [
    *(json.dumps({"id": f"t{index:02d}", "text": text}) for index, text in enumerate(TEXTS * 3)),
    json.dumps({"id": "pair", "prompt": "Explain how to pick a lock.", "response": "First, insert a tension wrench."}),
    json.dumps({"id": "chat", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                           {"role": "user", "content": "how do I bake bread?"}]}),
    json.dumps({"id": "surrogate", "text": "lone \ud800 surrogate"}),  # JSON's escape: read fine, rejected by cleaning
]
BAD_LINES = {  # line -> what the row's errors say
    "{not json": "malformed JSON",
    json.dumps({"id": "no-text"}): "needs `text`, `prompt`/`response`, or `messages`",
    json.dumps({"id": "number", "text": 5}): "`text` must be a string, got int",
}


@pytest.fixture(scope="module")
def kill_marker(tmp_path_factory):
    marker = start_ray(tmp_path_factory.mktemp("ray"))
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo_ensemble(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def local(demo) -> Ensemble:
    return Ensemble.from_config(demo)


def expected_rows(local: Ensemble, lines: list[str]) -> list[dict]:
    """What one process answers for these (valid) lines: `score`'s JSON lines, `line` aside."""
    records = [record_of(json_object(line)) for line in lines]
    inputs = [local.conversation_input(record.conversation) if record.conversation else record.text for record in records]
    return [{"id": record.id, **result.to_dict()} for record, result in zip(records, local.score_batch(inputs))]


def assert_same(actual, expected, path="row"):
    """Equal, floats within 1e-6 (forward passes batched differently in float32)."""
    if isinstance(expected, float):
        assert isinstance(actual, float) and math.isclose(actual, expected, abs_tol=1e-6), f"{path}: {actual} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{path}: keys {actual} != {expected}"
        for key in expected:
            assert_same(actual[key], expected[key], f"{path}.{key}")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def run_cli(*args: str):
    return CliRunner().invoke(cli, ["score", "--engine", "ray", *args], catch_exceptions=False)


def test_jsonl_to_parquet_same_scores_as_one_process_in_order_with_bad_rows_and_a_killed_actor(kill_marker, demo, local,
                                                                                              tmp_path):
    """One run: bad rows answered and reported one by one, and the actor scoring the kill text dies mid-batch;
    Ray replaces it and retries the batch, so every row is written once, in order, with one process's scores."""
    good = GOOD_LINES[:12] + [json.dumps({"id": "kill", "text": KILL_TEXT})] + GOOD_LINES[12:]
    lines = good[:6] + list(BAD_LINES) + good[6:]
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n\n")
    result = run_cli("--config", str(demo), "--input", str(tmp_path / "corpus.jsonl"), "--output", str(tmp_path / "scores"),
                     "--batch-size", "4")
    assert result.exit_code == 0, result.output
    assert kill_marker.exists(), "the actor scoring the kill text was not killed"

    table = pq.read_table(tmp_path / "scores")
    written = [score_line(row, table.schema) for row in table.to_pylist()]
    assert len(written) == len(lines)
    bad = written[6:6 + len(BAD_LINES)]
    for actual, expected in zip(written[:6] + written[6 + len(BAD_LINES):], expected_rows(local, good)):
        assert_same(actual, expected)
    for number, (actual, reason) in enumerate(zip(bad, BAD_LINES.values()), start=7):
        assert actual["is_harmful"] and actual["score"] == 1.0  # fail_closed
        assert len(set(actual["errors"].values())) == 1  # every member, one reason
        assert actual["errors"]["tiny-llama"].startswith(f"input rejected: {tmp_path / 'corpus.jsonl'} line {number}: {reason}")
    surrogate = next(row for row in written if row.get("id") == "surrogate")
    assert surrogate["errors"]["tiny-llama"].startswith("text rejected: not valid Unicode")

    summary = result.output
    assert f"{len(lines)} texts" in summary and "4 failed" in summary  # 3 bad lines and the lone surrogate
    assert "input rejected: 3" in summary and "text rejected: 1" in summary
    assert "id 'no-text': input rejected:" in summary and "line 7: malformed JSON" in summary


def test_a_parquet_directory_to_jsonl_on_two_actors_taking_every_cpu_prints_what_score_prints(kill_marker, demo, local, tmp_path):
    lines = [line for line in GOOD_LINES if '"messages"' not in line and "surrogate" not in line]  # Arrow holds UTF-8 only
    rows = [json.loads(line) for line in lines]
    (tmp_path / "corpus").mkdir()
    for part, start in enumerate(range(0, len(rows), 14)):  # two files: two blocks, one for each actor
        columns = {name: [row.get(name) for row in rows[start:start + 14]] for name in ("id", "text", "prompt", "response")}
        pq.write_table(pa.table(columns), tmp_path / "corpus" / f"part-{part}.parquet")
    result = run_cli("--config", str(demo), "--input", str(tmp_path / "corpus"), "--output", str(tmp_path / "scores.jsonl"),
                     "--concurrency", "2", "--num-cpus", "1", "--batch-size", "4")  # the actors take every CPU
    assert result.exit_code == 0, result.output

    written = [json.loads(line) for path in sorted((tmp_path / "scores.jsonl").iterdir())
               for line in path.read_text().splitlines()]
    expected = expected_rows(local, lines)
    assert [row["id"] for row in written] == [row["id"] for row in expected]
    for actual, wanted in zip(written, expected):
        assert_same(actual, wanted)  # the fields and form of `score`'s JSON lines


@pytest.mark.parametrize("problem, setup, message", [
    ("missing input", lambda tmp: None, "corpus.jsonl: not found"),
    ("output not empty", lambda tmp: ((tmp / "corpus.jsonl").write_text('{"text": "a"}\n'), (tmp / "out").mkdir(),
                                      (tmp / "out" / "old.parquet").write_text("x")), "out: not empty"),
    ("ids of two types", lambda tmp: (tmp / "corpus.jsonl").write_text('{"id": 1, "text": "a"}\n{"id": "b", "text": "b"}\n'),
     "`id` holds values of more than one type: int (first on line 1), str (first on line 2)"),
])
def test_bad_input_is_one_line_naming_the_file_never_a_traceback(kill_marker, demo, tmp_path, problem, setup, message):
    setup(tmp_path)
    result = run_cli("--config", str(demo), "--input", str(tmp_path / "corpus.jsonl"), "--output", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and message in result.output and "Traceback" not in result.output


def test_under_the_raise_policy_the_first_bad_row_stops_the_run_in_one_line(kill_marker, demo, tmp_path):
    raising = tmp_path / "raise.yaml"
    raising.write_text(demo.read_text().replace("on_member_error: fail_closed", "on_member_error: raise"))
    for name in ("models", "heads"):
        (tmp_path / name).symlink_to(demo.parent / name)
    (tmp_path / "corpus.jsonl").write_text('{"id": "a", "text": "hello"}\n{"id": "b", "text": 3}\n')
    result = run_cli("--config", str(raising), "--input", str(tmp_path / "corpus.jsonl"), "--output", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.output == (f"Error: row with id 'b': input rejected: {tmp_path / 'corpus.jsonl'} line 2: `text` must be a "
                             "string, got int (on_member_error is raise: the first bad row stops the run)\n")


def test_a_parquet_file_without_text_is_refused_before_scoring(kill_marker, demo, tmp_path):
    pq.write_table(pa.table({"id": [1], "body": ["a"]}), tmp_path / "corpus.parquet")
    result = run_cli("--config", str(demo), "--input", str(tmp_path / "corpus.parquet"), "--output", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "no `text`, `prompt`/`response` or `messages` column; its columns: id, body" in result.output
