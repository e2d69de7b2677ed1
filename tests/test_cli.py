"""The command line end to end: inputs, outputs, exit codes and one-line errors."""

import json

import pytest
from click.testing import CliRunner

from siren_ensemble import Ensemble
from siren_ensemble.cli import cli


@pytest.fixture
def config(tiny_models, write_head, write_config):
    head = write_head(tiny_models["llama"], max_length=16)
    return write_config({"members": [
        {"name": "a", "backbone": "llama3", "head": str(head)},
        {"name": "b", "backbone": "llama3", "head": str(head), "threshold": 0.2},
    ], "threshold": 0.5})


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(arg) for arg in args], input=input)


def rows(result):
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_score_texts_prints_one_json_object_per_input_in_order(config):
    out = rows(run("score", "--config", config, "first text", "second", "word " * 40))
    expected = Ensemble.from_config(config).score_batch(["first text", "second", "word " * 40])
    assert [row["score"] for row in out] == pytest.approx([r.score for r in expected], abs=1e-6)
    assert set(out[0]) == {"score", "is_harmful", "threshold", "members", "truncated"}
    assert set(out[0]["members"]) == {"a", "b"}
    assert [row["truncated"] for row in out] == [False, False, True]


def test_score_jsonl_input_echoes_ids_and_joins_prompt_response(config, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "x1", "text": "hello"}\n\n{"id": 7, "prompt": "Q?", "response": "A."}\n{"prompt": "only prompt"}\n')
    out = rows(run("score", "--config", config, "--input", path))
    assert [row.get("id") for row in out] == ["x1", 7, None]
    assert [row["line"] for row in out] == [1, 3, 4]
    ensemble = Ensemble.from_config(config)
    assert out[1]["score"] == pytest.approx(ensemble.score(prompt="Q?", response="A.").score, abs=1e-6)


def test_score_text_file_and_stdin(config, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("one\n\ntwo\r\n")
    assert [row["line"] for row in rows(run("score", "--config", config, "--input", path))] == [1, 3]
    assert len(rows(run("score", "--config", config, "--input", "-", input='{"text": "a"}\n{"text": "b"}\n'))) == 2
    assert len(rows(run("score", "--config", config, "--input", "-", input="plain a\nplain b\nplain c\n"))) == 3


def test_prompt_response_and_threshold_override(config):
    out = rows(run("score", "--config", config, "--prompt", "Q?", "--response", "A.", "--threshold", "0"))
    assert out[0]["threshold"] == 0 and out[0]["is_harmful"] is True


def test_fail_on_harmful_sets_exit_status(config):
    assert run("score", "--config", config, "--threshold", "0", "--fail-on-harmful", "x").exit_code == 1
    assert run("score", "--config", config, "--threshold", "1", "--fail-on-harmful", "x").exit_code == 0


def test_table_format(config):
    result = run("score", "--config", config, "--format", "table", "a short text", "another " * 20)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["#", "score", "harmful", "a", "b", "text"]
    assert len(lines) == 3 and lines[2].endswith("...")


@pytest.mark.parametrize("content,message", [
    (b'{"text": "ok"}\n{"text": 5}\n', "line 2: `text` must be a string, got int"),
    (b'{"text": "ok"}\n{broken\n', "line 2: malformed JSON"),
    (b'{"id": 1}\n', "line 1: needs `text`, `prompt`/`response`, or `messages`"),
    (b'["a"]\n', "line 1: expected a JSON object, got list"),
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "line 2: invalid UTF-8 at byte"),
    (b"", "no inputs (the file is empty or blank)"),
    (b"\n \n", "no inputs"),
])
def test_bad_input_files_exit_2_with_one_line(config, tmp_path, content, message):
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    result = run("score", "--config", config, "--input", path)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_several_bad_lines_are_all_reported(config, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": 1}\n{"text": "fine"}\n{oops\n')
    result = run("score", "--config", config, "--input", path)
    assert result.exit_code == 2 and "line 1:" in result.stderr and "line 3:" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["score", "--config", "nowhere.yaml", "x"], "nowhere.yaml: config file not found"),
    (["score", "--config", "{config}"], "give exactly one input"),
    (["score", "--config", "{config}", "x", "--prompt", "p"], "give exactly one input"),
    (["score", "--config", "{config}", "--input", "missing.txt"], "missing.txt: input file not found"),
])
def test_usage_errors_exit_2(config, args, message):
    result = run(*[arg.replace("{config}", str(config)) for arg in args])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bad_config_is_one_line_naming_the_field(write_config, tmp_path):
    path = write_config({"members": [{"name": "a", "backbone": "llama3", "head": "h", "dtype": "fp8"}]})
    result = run("validate", "--config", path)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"Error: {path}: members[0].dtype: Input should be 'auto', 'float32', 'bfloat16', 'float16' or 'int8'"]


def test_validate_reports_members_without_loading_weights(config, monkeypatch):
    from siren_ensemble.extraction import LoadedBackbone

    monkeypatch.setattr(LoadedBackbone, "load", lambda *_: pytest.fail("validate must not load weights"))
    result = run("validate", "--config", config)
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout and "a: backbone llama3" in result.stdout and "layers 0-2 (2)" in result.stdout


def test_validate_runs_no_repository_code_for_trust_remote_code(tiny_models, write_head, write_config, monkeypatch):
    from transformers import AutoConfig

    head = write_head(tiny_models["llama"])
    config = write_config({"members": [{"name": "a", "backbone": "llama3", "head": str(head), "trust_remote_code": True}]},
                          name="remote.yaml")
    original = AutoConfig.from_pretrained.__func__

    def guarded(cls, *args, **kwargs):
        assert not kwargs.get("trust_remote_code"), "validate would run the repository's code"
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", classmethod(guarded))
    result = run("validate", "--config", config)
    assert result.exit_code == 0, result.output
    assert "a: backbone config not read (trust_remote_code: validate runs no repository code)" in result.stdout


def test_plugins_json_lists_builtins():
    result = run("plugins", "--json")
    listing = json.loads(result.stdout)
    assert [entry["name"] for entry in listing["backbones"]] == ["llama3", "qwen3", "hf"]
    assert {entry["plugin"] for entry in listing["combiners"]} == {"siren-ensemble (built-in)"}


def _split_dir(directory, per_split: int = 12):
    directory.mkdir()
    for split in ("train", "validation"):
        records = [{"text": f"harmful {split} request number {i}", "label": 1, "source": "s"} for i in range(per_split)]
        records += [{"prompt": f"benign {split} question {i}", "response": "an answer", "label": "benign", "source": "s"}
                    for i in range(per_split)]
        (directory / f"{split}.jsonl").write_text("\n".join(json.dumps(record) for record in records) + "\n")
    return directory


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_fit_stacker_then_score_with_stacking(config, tmp_path, write_config, tiny_models, write_head, suffix):
    data = _split_dir(tmp_path / "split")
    params = tmp_path / f"stacker{suffix}"
    fitted = run("fit-stacker", "--config", config, "--data", data, "--out", params, "--target-recall", "0.9", "--interactions",
                 "--cache-dir", tmp_path / "cache")
    assert fitted.exit_code == 0, fitted.output
    summary = json.loads(fitted.stdout)
    # Fitted on the cross-fitted scores of train + validation, not validation alone.
    assert summary["members"] == ["a", "b"] and summary["examples"] == 48 and summary["harmful"] == 24
    assert summary["interactions"] == [["a", "b"]] and len(summary["coefficients"]) == 3
    assert summary["validation_out_of_fold"]["recall"] >= 0.9 and 0.0 <= summary["threshold"] <= 1.0

    head = write_head(tiny_models["llama"], max_length=16)
    stacked = write_config({
        "members": [{"name": n, "backbone": "llama3", "head": str(head)} for n in ("a", "b")],
        "combiner": {"type": "stacking", "params": params.name},
    }, name="stacked.yaml")
    scored = rows(run("score", "--config", stacked, "hello"))[0]
    assert 0.0 <= scored["score"] <= 1.0
    assert scored["threshold"] == pytest.approx(summary["threshold"])  # the stacker implies its own threshold


def test_fit_stacker_needs_labels(config, tmp_path):
    data = _split_dir(tmp_path / "split")
    (data / "validation.jsonl").write_text('{"text": "a"}\n')
    result = run("fit-stacker", "--config", config, "--data", data, "--out", tmp_path / "s.json", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 2 and "line 1: `label` must be 0/1" in result.stderr
