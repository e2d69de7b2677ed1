"""JSON lines on Ray Data, read and written as ``siren-ensemble score`` reads and prints them.

The reader keeps each line with its file and line number; a line that is not a JSON object (or not UTF-8, or
too long) becomes a row with the reason instead of stopping the corpus. The line is read by the local rules
where it is scored (``rows.row_records``). The writer prints each output row as ``score`` prints it.
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
from ..inputs import json_object
from ..text import check_encodable
from .rows import ID_COLUMN, INPUT_ERROR_COLUMN, LINE_COLUMN, ROWS_PER_BLOCK, WHERE_COLUMN, score_line

JSONL_EXTENSIONS = ["jsonl", "json", "jsonl.gz", "json.gz"]


class ScoreInputDatasource(FileBasedDatasource):
    """Rows ``id``, ``_line`` (the line, read again where it is scored), ``_where`` (file and line) and
    ``_input_error`` (why a line holds no JSON object, else null)."""

    def __init__(self, paths: str | list[str], **file_based_datasource_kwargs):
        super().__init__(paths, file_extensions=JSONL_EXTENSIONS, **file_based_datasource_kwargs)

    def _read_stream(self, f: "pa.NativeFile", path: str) -> Iterator[pa.Table]:
        block = _Block(path)
        for number, raw in enumerate(_lines(io.BufferedReader(f)), start=1):
            block.add(number, raw)
            if len(block) >= ROWS_PER_BLOCK:
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
        self.columns: dict[str, list[Any]] = {ID_COLUMN: [], LINE_COLUMN: [], WHERE_COLUMN: [], INPUT_ERROR_COLUMN: []}
        self.first_line_of_id_type: dict[type, int] = {}

    def __len__(self) -> int:
        return len(self.columns[ID_COLUMN])

    def add(self, number: int, raw: bytes | None) -> None:
        line = raw.removesuffix(b"\n").rstrip(b"\r") if raw is not None else None
        if line is None or len(line) > files.MAX_INPUT_LINE_BYTES:
            return self._add(number, problem=f"over the limit of {files.MAX_INPUT_LINE_BYTES:,} bytes for one line")
        if not line.strip():
            return None
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as error:
            return self._add(number, problem=f"invalid UTF-8 at byte {error.start} of the line")
        try:
            item = json_object(decoded)
        except InputError as error:
            return self._add(number, problem=str(error))
        row_id = item.get(ID_COLUMN)
        if isinstance(row_id, str):
            try:
                check_encodable(row_id)  # Arrow holds UTF-8 only
            except ValueError as error:
                return self._add(number, problem=f"`id`: {error}")
        self._add(number, row_id, decoded)

    def _add(self, number: int, row_id: Any = None, line: str | None = None, problem: str | None = None) -> None:
        if row_id is not None:
            self.first_line_of_id_type.setdefault(type(row_id), number)
        for name, value in ((ID_COLUMN, row_id), (LINE_COLUMN, line), (WHERE_COLUMN, f"{self.path} line {number}"),
                            (INPUT_ERROR_COLUMN, problem)):
            self.columns[name].append(value)

    def table(self) -> pa.Table:
        try:
            ids = pa.array(self.columns[ID_COLUMN])
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            kinds = ", ".join(f"{kind.__name__} (first on line {line})" for kind, line in self.first_line_of_id_type.items())
            raise InputError(f"{self.path}: `id` holds values of more than one type: {kinds}; give every row's `id` one type") from None
        return pa.table({ID_COLUMN: ids, **{name: pa.array(values, pa.string()) for name, values in self.columns.items()
                                            if name != ID_COLUMN}})


class ScoreLinesDatasink(BlockBasedFileDatasink):
    """One JSON line per output row, as ``siren-ensemble score`` prints it."""

    def __init__(self, path: str, **file_datasink_kwargs):
        super().__init__(path, file_format="jsonl", **file_datasink_kwargs)

    def write_block_to_file(self, block: BlockAccessor, file: "pa.NativeFile") -> None:
        table = block.to_arrow()
        lines = [json.dumps(score_line(row, table.schema), ensure_ascii=False, allow_nan=False) + "\n"
                 for row in table.to_pylist()]
        file.write("".join(lines).encode("utf-8"))
