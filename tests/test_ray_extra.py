"""The `ray` extra stays optional: nothing imports ray until --engine ray asks for it, options of one engine are
refused by the other by name, and a missing extra is one line saying what to install. No Ray instance here."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from siren_ensemble.cli import cli
from siren_ensemble.config import EnsembleConfig
from siren_ensemble.errors import ConfigError


def test_importing_the_package_and_the_cli_imports_no_ray():
    code = ("import sys, siren_ensemble, siren_ensemble.cli, siren_ensemble.serve.app, siren_ensemble.ray; "
            "print(sorted(name for name in sys.modules if name == 'ray' or name.startswith('ray.')))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert found == "[]"


@pytest.mark.parametrize("args, message", [
    (["score", "--output", "out", "hello"], "--output: only with --engine ray"),
    (["score", "--concurrency", "2", "hello"], "--concurrency: only with --engine ray"),
    (["serve", "--replicas", "2"], "--replicas: only with --engine ray"),
    (["serve", "--engine", "ray", "--max-connections", "9"], "--max-connections: not with --engine ray"),
    (["score", "--engine", "ray", "hello"], "--engine ray scores a corpus: give --input DATA"),
    (["score", "--engine", "ray", "--input", "x.jsonl", "--output", "out", "--format", "table"], "--format: not with --engine ray"),
    (["score", "--engine", "ray", "--concurrency", "3-1", "--input", "x.jsonl", "--output", "o"], "MIN <= MAX"),
])
def test_options_of_the_other_engine_are_refused_by_name(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_without_the_extra_the_engine_says_what_to_install(monkeypatch, tmp_path):
    for name in [name for name in sys.modules if name == "ray" or name.startswith(("ray.", "siren_ensemble.ray"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = CliRunner().invoke(cli, ["score", "--engine", "ray", "--input", "x.jsonl", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "score --engine ray needs the `ray` extra: pip install 'siren-ensemble[ray]'" in result.output


@pytest.mark.parametrize("section, message", [
    ({"data": {"concurrency": [3, 1]}}, "ray.data.concurrency"),
    ({"data": {"batch_size": 0}}, "ray.data.batch_size"),
    ({"serve": {"replicas": 0}}, "ray.serve.replicas"),
    ({"serve": {"autoscale": True}}, "ray.serve.autoscale"),
])
def test_the_ray_section_is_validated_without_ray(tiny_models, write_head, section, message):
    head = write_head(tiny_models["llama"])
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        EnsembleConfig.from_dict({"members": [{"name": "a", "backbone": "llama3", "head": str(head)}], "ray": section})


def test_every_result_field_has_a_column_and_comes_back_as_score_prints_it(tiny_models, tmp_path):
    """Categories, a conversation report, the cascade's stage, errors: Arrow columns, then `score`'s JSON form."""
    pytest.importorskip("pyarrow", reason="pyarrow comes with the `ray` extra")
    import pyarrow as pa

    from siren_ensemble import Ensemble
    from siren_ensemble.conversation import Conversation
    from siren_ensemble.ray.rows import results_table, score_line
    from siren_ensemble.testing import random_category_head, random_head

    from .conftest import HIDDEN

    heads = []
    for seed in range(2):
        head = random_head(str(tiny_models["llama"]), layers=[0, 2], hidden_size=HIDDEN, seed=seed, max_length=32)
        heads.append(head.save(tmp_path / f"head{seed}"))
        random_category_head(head, seed=seed).save(heads[-1])
    ensemble = Ensemble.from_config(EnsembleConfig.from_dict({
        "members": [{"name": f"m{index}", "backbone": "llama3", "head": str(head)} for index, head in enumerate(heads)],
        "combiner": {"type": "cascade", "stages": [{"members": ["m0"], "low": 0.2, "high": 0.8}, {"members": ["m1"]}]},
    }))
    chat = Conversation.parse([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                               {"role": "user", "content": "how do I pick a lock?"}])
    results = ensemble.score_batch(["How do I bake bread?", "bad \ud800 text", ensemble.conversation_input(chat)])
    results += ensemble.unscorable(["input rejected: corpus.jsonl line 9: malformed JSON"])
    ids = pa.array(["a", "b", "c", None])

    table = results_table(ids, results, ensemble)
    lines = [score_line(row, table.schema) for row in table.to_pylist()]
    expected = [({"id": row_id} if row_id is not None else {}) | result.to_dict() for row_id, result in zip(ids.to_pylist(), results)]
    assert lines == expected and [list(line) for line in lines] == [list(row) for row in expected]  # the same order too
    assert {"categories", "top_category", "harm_categories", "decided_by", "conversation", "errors"} <= set().union(*lines)
