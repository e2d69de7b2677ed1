"""Where a corpus is read from and its scores written to: local paths or any URI pyarrow reads (s3://, gs://, ...)."""

from __future__ import annotations

import os
from typing import Literal

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import InputError, SirenError

Format = Literal["jsonl", "parquet"]
_SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".json": "jsonl", ".jsonl.gz": "jsonl", ".json.gz": "jsonl",
                                ".parquet": "parquet"}


def filesystem_of(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path on it; a location without a scheme is a local path."""
    if "://" not in location:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as error:
        raise InputError(f"{location}: cannot open ({error})") from None


def format_of_name(name: str) -> Format | None:
    lowered = name.lower()
    return next((kind for suffix, kind in _SUFFIXES.items() if lowered.endswith(suffix)), None)


def data_files(location: str) -> tuple[pafs.FileSystem, list[str]]:
    """The filesystem, and the file at ``location`` or the files under it (hidden and ``_`` files aside), sorted."""
    filesystem, path = filesystem_of(location)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"{location}: not found")
    if info.type == pafs.FileType.File:
        return filesystem, [path]
    return filesystem, sorted(entry.path for entry in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
                              if entry.type == pafs.FileType.File and not entry.base_name.startswith((".", "_")))


def input_format(location: str) -> Format:
    """JSONL or Parquet, from the file's name, or from the names of the files in a directory."""
    _filesystem, paths = data_files(location)
    kinds = {format_of_name(path) for path in paths} - {None}
    if len(paths) == 1 and not kinds:
        raise InputError(f"{location}: not JSONL or Parquet (expected a name ending in {', '.join(_SUFFIXES)})")
    if len(kinds) != 1:
        found = "no JSONL or Parquet files" if not kinds else "both JSONL and Parquet files"
        raise InputError(f"{location}: a directory with {found}; point --input at one kind")
    return kinds.pop()


def check_output_free(location: str) -> None:
    """Scores go into a new or empty directory: files left from an earlier run would be read as this run's."""
    filesystem, path = filesystem_of(location)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise SirenError(f"{location}: a file; --output names a directory to write the score files into")
    if info.type == pafs.FileType.Directory and filesystem.get_file_info(pafs.FileSelector(path)):
        raise SirenError(f"{location}: not empty; choose a new --output directory (or remove this one)")
