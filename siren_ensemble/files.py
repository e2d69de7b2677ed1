"""Files the command line reads (configs, head and calibration JSON, stackers, inputs): size limits checked
before a byte is read, and only regular files, so a path such as /dev/zero is one clear error, not a hang.

The limits are generous: the largest real file of each kind is a small fraction of its limit.
"""

from __future__ import annotations

import stat
from pathlib import Path

from .errors import SirenError

_MiB = 1024 * 1024
MAX_CONFIG_BYTES = 1 * _MiB
#: A head's siren_config.json: thousands of neuron indices per layer.
MAX_HEAD_CONFIG_BYTES = 16 * _MiB
#: calibration.json (isotonic breakpoints) and stacking parameters (JSON or safetensors).
MAX_ARTIFACT_BYTES = 16 * _MiB
#: An --input file is read line by line, each line under its own limit.
MAX_INPUT_BYTES = 1024 * _MiB
MAX_INPUT_LINE_BYTES = 16 * _MiB


def check_file(path: Path, limit: int, error: type[SirenError], what: str, allow_pipe: bool = False) -> None:
    """Raise ``error`` naming ``path`` unless it is a regular file (or, with ``allow_pipe``, a pipe) of at most ``limit`` bytes."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as problem:
        raise error(f"{path}: cannot read ({problem.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path}: is a directory, not {_a(what)}")
    if allow_pipe and stat.S_ISFIFO(info.st_mode):
        return  # its size is unknown; the reader stops at the limit instead
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: not a regular file (a device, pipe or socket); {_a(what)} must be a file")
    if info.st_size > limit:
        raise error(f"{path}: {info.st_size:,} bytes, over the limit of {limit:,} bytes for {_a(what)}")


def read_text(path: str | Path, limit: int, error: type[SirenError], what: str) -> str:
    """A whole UTF-8 file of at most ``limit`` bytes; every problem is ``error`` naming the file."""
    path = Path(path)
    check_file(path, limit, error, what)
    try:
        with path.open("rb") as stream:
            data = stream.read(limit + 1)  # the file may have grown since the check
    except OSError as problem:
        raise error(f"{path}: cannot read ({problem.strerror})") from None
    if len(data) > limit:
        raise error(f"{path}: over the limit of {limit:,} bytes for {_a(what)}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text (byte {problem.start})") from None


def _a(what: str) -> str:
    return f"{'an' if what[0] in 'aeiou' else 'a'} {what}"
