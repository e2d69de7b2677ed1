"""JSON lines on Ray Data, read and written as ``siren-ensemble score`` reads and prints them.

The reader parses each line with the local reader's rules (``inputs.parse_text_object``); a line that holds
no text to score becomes a row with the reason (file and line) instead of stopping the corpus. The writer
prints each output row as ``score`` prints it (``rows.score_line``).
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterator

import pyarrow as pa
from ray.data.block import BlockAccessor
from ray.data.datasource import BlockBasedFileDatasink, FileBasedDatasource

from .. import files
from ..errors import InputError
from ..inputs import parse_text_object, text_of
from ..text import check_encodable
from .rows import ID_COLUMN, INPUT_ERROR_COLUMN, INPUT_REJECTED, score_line

JSONL_EXTENSIONS = ["jsonl", "json", "jsonl.gz", "json.gz"]
#: Lines per block read: blocks stream on to the scorers while a large file is still being read.
LINES_PER_BLOCK = 4096


class ScoreInputDatasource(FileBasedDatasource):
    """Rows ``id``, ``text`` and ``_input_error`` (the reason a line holds no text, else null)."""

    def __init__(self, paths: str | list[str], **file_based_datasource_kwargs):
        super().__init__(paths, file_extensions=JSONL_EXTENSIONS, **file_based_datasource_kwargs)

    def _read_stream(self, f: "pa.NativeFile", path: str) -> Iterator[pa.Table]:
        block = _Block(path)
        for number, raw in enumerate(_lines(io.BufferedReader(f)), start=1):
            block.add(number, raw)
            if len(block) >= LINES_PER_BLOCK:
                yield block.table()
                block = _Block(path)
        if len(block):
            yield block.table()


def _lines(stream: io.BufferedReader) -> Iterator[bytes | None]:
    """Each line, or None for one over ``files.MAX_INPUT_LINE_BYTES`` (skipped without holding it in memory)."""
    limit = files.MAX_INPUT_LINE_BYTES + 2  # room for the line's own "\r\n"
    while raw := stream.readline(limit):
        if len(raw) < limit or raw.endswith(b"\n"):
            yield raw
            continue
        while (rest := stream.readline(limit)) and not rest.endswith(b"\n"):
            pass
        yield None


class _Block:
    def __init__(self, path: str):
        self.path = path
        self.ids: list[Any] = []
        self.texts: list[str | None] = []
        self.problems: list[str | None] = []
        self.first_line_of_id_type: dict[type, int] = {}

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, number: int, raw: bytes | None) -> None:
        where = f"{self.path} line {number}"
        line = raw.removesuffix(b"\n").rstrip(b"\r") if raw is not None else None
        if line is None or len(line) > files.MAX_INPUT_LINE_BYTES:
            return self._reject(where, f"over the limit of {files.MAX_INPUT_LINE_BYTES:,} bytes for one line")
        if not line.strip():
            return
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as error:
            return self._reject(where, f"invalid UTF-8 at byte {error.start} of the line")
        try:
            item, _is_pair = parse_text_object(decoded)
        except InputError as error:
            item = _object_or_none(decoded)
            return self._reject(where, str(error), item.get(ID_COLUMN) if item else None, number)
        text = text_of(item)
        try:
            check_encodable(text)  # Arrow holds UTF-8 only: a lone surrogate is reported here, as cleaning reports it
        except ValueError as error:
            return self._reject(where, str(error), item.get(ID_COLUMN), number, kind="text rejected")
        self._add(item.get(ID_COLUMN), text, None, number)

    def _reject(self, where: str, reason: str, row_id: Any = None, number: int = 0, kind: str = INPUT_REJECTED) -> None:
        self._add(row_id, None, f"{kind}: {where}: {reason}", number)

    def _add(self, row_id: Any, text: str | None, problem: str | None, number: int) -> None:
        if isinstance(row_id, str):
            try:
                check_encodable(row_id)
            except ValueError as error:
                row_id, text, problem = None, None, f"{INPUT_REJECTED}: {self.path} line {number}: `id`: {error}"
        if row_id is not None:
            self.first_line_of_id_type.setdefault(type(row_id), number)
        self.ids.append(row_id)
        self.texts.append(text)
        self.problems.append(problem)

    def table(self) -> pa.Table:
        try:
            ids = pa.array(self.ids)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            kinds = ", ".join(f"{kind.__name__} (first on line {line})" for kind, line in self.first_line_of_id_type.items())
            raise InputError(f"{self.path}: `id` holds values of more than one type: {kinds}; give every row's `id` one type") from None
        return pa.table({ID_COLUMN: ids, "text": pa.array(self.texts, pa.string()),
                         INPUT_ERROR_COLUMN: pa.array(self.problems, pa.string())})


def _object_or_none(line: str) -> dict | None:
    """The line's JSON object, to keep the id of a line that has one but no valid text."""
    try:
        item = json.loads(line)
    except ValueError:
        return None
    return item if isinstance(item, dict) else None


class ScoreLinesDatasink(BlockBasedFileDatasink):
    """One JSON line per output row, as ``siren-ensemble score`` prints it."""

    def __init__(self, path: str, **file_datasink_kwargs):
        super().__init__(path, file_format="jsonl", **file_datasink_kwargs)

    def write_block_to_file(self, block: BlockAccessor, file: "pa.NativeFile") -> None:
        lines = [json.dumps(score_line(row), ensure_ascii=False, allow_nan=False) + "\n"
                 for row in block.to_arrow().to_pylist()]
        file.write("".join(lines).encode("utf-8"))
