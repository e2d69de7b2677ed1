"""Every file the command line reads has a size limit, checked before reading; devices are refused."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from siren_ensemble import files
from siren_ensemble.calibration import Calibration
from siren_ensemble.cli import cli
from siren_ensemble.config import load_config
from siren_ensemble.errors import ArtifactError, ConfigError
from siren_ensemble.head import CONFIG_FILE, SirenHead
from siren_ensemble.stacking import StackerParams


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def one_line_error(result, message):
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.fixture
def config(tiny_models, write_head, write_config):
    return write_config({"members": [{"name": "a", "backbone": "llama3", "head": str(write_head(tiny_models["llama"], max_length=16))}]})


def never_read(monkeypatch):
    """Fail the test if a file is opened (the limit must be checked from its size alone)."""
    monkeypatch.setattr(Path, "open", lambda self, *args, **kwargs: pytest.fail(f"opened {self} although it is over its limit"))


def test_a_config_over_its_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    with path.open("w") as stream:
        stream.write("members: []\n")
        stream.truncate(files.MAX_CONFIG_BYTES + 1)  # sparse: no megabyte is written
    never_read(monkeypatch)
    with pytest.raises(ConfigError, match=f"{path}: {files.MAX_CONFIG_BYTES + 1:,} bytes, over the limit of 1,048,576 bytes"):
        load_config(path)


@pytest.mark.parametrize("option", ["--config", "--input"])
def test_devices_are_refused_with_one_line(config, option):
    args = ["score", "--config", config, "--input", "/dev/zero"] if option == "--input" else ["score", "--config", "/dev/zero", "hi"]
    result = run(*args)
    one_line_error(result, "/dev/zero: not a regular file (a device, pipe or socket)")


def test_head_config_calibration_and_stacker_files_have_limits(tiny_models, write_head, tmp_path, monkeypatch):
    head = write_head(tiny_models["llama"])
    calibration = Calibration("platt", {"slope": 1.0, "intercept": 0.0}).save(tmp_path / "calibration.json")
    stacker = StackerParams(("a",), (1.0,), 0.0).save(tmp_path / "stacker.json")
    monkeypatch.setattr(files, "MAX_HEAD_CONFIG_BYTES", 100)
    monkeypatch.setattr(files, "MAX_ARTIFACT_BYTES", 20)
    with pytest.raises(ArtifactError, match=f"{head / CONFIG_FILE}: .* bytes, over the limit of 100 bytes for a head config"):
        SirenHead.load(head)
    with pytest.raises(ArtifactError, match=f"{calibration}: .* over the limit of 20 bytes for a calibration file"):
        Calibration.load(calibration)
    with pytest.raises(ArtifactError, match=f"{stacker}: .* over the limit of 20 bytes for a stacking parameters file"):
        StackerParams.load(stacker)


def test_a_head_config_that_is_a_device_is_refused(tiny_models, write_head):
    head = write_head(tiny_models["llama"])
    (head / CONFIG_FILE).unlink()
    (head / CONFIG_FILE).symlink_to("/dev/zero")
    with pytest.raises(ArtifactError, match="not a regular file"):
        SirenHead.load(head)


def test_input_file_and_line_limits(config, tmp_path, monkeypatch):
    path = tmp_path / "in.txt"
    path.write_text("short\n" + "x" * 50 + "\n")
    monkeypatch.setattr(files, "MAX_INPUT_LINE_BYTES", 40)
    one_line_error(run("score", "--config", config, "--input", path), "line 2: over the limit of 40 bytes for one line")
    monkeypatch.setattr(files, "MAX_INPUT_LINE_BYTES", 100)
    monkeypatch.setattr(files, "MAX_INPUT_BYTES", 30)
    one_line_error(run("score", "--config", config, "--input", path), "57 bytes, over the limit of 30 bytes for an input file")
    result = CliRunner().invoke(cli, ["score", "--config", str(config), "--input", "-"], input="a\n" * 20)
    one_line_error(result, "<stdin>: over the limit of 30 bytes for an input file")


def test_a_line_at_the_limit_is_read(config, tmp_path, monkeypatch):
    path = tmp_path / "in.txt"
    path.write_bytes(b"y" * 40 + b"\r\n" + b"z\n")
    monkeypatch.setattr(files, "MAX_INPUT_LINE_BYTES", 40)
    result = run("score", "--config", config, "--input", path)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["line"] for line in result.stdout.splitlines()] == [1, 2]


def test_a_pipe_is_read_as_input(config, tmp_path):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "w") as stream:
            stream.write("one\ntwo\n")

    writer = threading.Thread(target=write)
    writer.start()
    result = run("score", "--config", config, "--input", fifo)
    writer.join(5)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
