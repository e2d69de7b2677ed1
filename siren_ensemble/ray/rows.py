"""Corpus rows in Arrow: the record each input row holds (or why it holds none), and the score fields out.

Input rows hold what a JSONL line of ``siren-ensemble score --input`` holds: ``text``, ``prompt``/``response``
or chat ``messages``, and an optional ``id``; they are read by the same rules (``inputs.record_of``).
Output rows hold the input's ``id`` and the fields of ``EnsembleResult.to_dict``, as typed columns.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import pyarrow as pa

from ..ensemble import Ensemble, EnsembleResult
from ..errors import InputError
from ..inputs import InputRecord, record_of

ID_COLUMN = "id"
#: Rows per block read: blocks stream on to the scorers while a large file is still being read.
ROWS_PER_BLOCK = 4096
INPUT_COLUMNS = ("text", "prompt", "response", "messages")
#: Set by the JSONL reader: the line as read (parsed again where it is scored), where it is, and the reason a
#: line holds no JSON object (else null).
LINE_COLUMN, WHERE_COLUMN, INPUT_ERROR_COLUMN = "_line", "_where", "_input_error"
#: What an input problem is recorded as under a result's ``errors`` (a text that fails cleaning: "text rejected").
INPUT_REJECTED = "input rejected"
#: Fields ``to_dict`` leaves out when they are empty: null in a Parquet column, left out of a JSON line.
OMITTED_WHEN_EMPTY = frozenset({ID_COLUMN, "errors", "decided_by", "conversation", "language", "unvalidated_language",
                                "kind"})

_STRING_MAP = pa.map_(pa.string(), pa.string())
_SCORE_MAP = pa.map_(pa.string(), pa.float64())


def check_input_schema(names: Sequence[str], types: Sequence[Any], where: str) -> None:
    """An InputError naming ``where`` unless rows can hold something to score, with strings where strings go."""
    if not set(INPUT_COLUMNS) & set(names) and LINE_COLUMN not in names:
        raise InputError(f"{where}: no `text`, `prompt`/`response` or `messages` column; its columns: {', '.join(names) or 'none'}")
    for name, kind in zip(names, types):
        if name in ("text", "prompt", "response") and isinstance(kind, pa.DataType) and not (
                pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
            raise InputError(f"{where}: column `{name}` holds {kind}, expected strings")


def row_records(batch: pa.Table) -> list[InputRecord | str]:
    """Per row, its record, or the reason (``input rejected: ...``) it holds nothing to score."""
    columns = {name: batch.column(name).to_pylist() for name in (*INPUT_COLUMNS, LINE_COLUMN, WHERE_COLUMN, INPUT_ERROR_COLUMN)
               if name in batch.column_names}
    records: list[InputRecord | str] = []
    for row in range(batch.num_rows):
        value = {name: values[row] for name, values in columns.items()}
        where = f"{value[WHERE_COLUMN]}: " if value.get(WHERE_COLUMN) else ""
        if value.get(INPUT_ERROR_COLUMN) is not None:
            records.append(f"{INPUT_REJECTED}: {where}{value[INPUT_ERROR_COLUMN]}")
            continue
        item = (json.loads(value[LINE_COLUMN]) if value.get(LINE_COLUMN) is not None
                else {name: value[name] for name in INPUT_COLUMNS if value.get(name) is not None})
        try:
            records.append(record_of(item))
        except InputError as error:
            records.append(f"{INPUT_REJECTED}: {where}{error}")
    return records


def output_schema(ensemble: Ensemble, id_type: pa.DataType | None) -> pa.Schema:
    """A column for every field ``to_dict`` gives this ensemble's results, in its order; ``id`` first."""
    fields = [pa.field(ID_COLUMN, id_type)] if id_type is not None else []
    fields += [
        pa.field("score", pa.float64()), pa.field("is_harmful", pa.bool_()), pa.field("threshold", pa.float64()),
        pa.field("members", pa.struct([pa.field(name, pa.float64()) for name in ensemble.member_names])),
        pa.field("truncated", pa.bool_()), pa.field("errors", _STRING_MAP), pa.field("decided_by", pa.int64()),
        pa.field("conversation", pa.struct([*(pa.field(name, pa.int64()) for name in
                                              ("turns", "judged_turns", "context_turns", "dropped_turns")),
                                            pa.field("rendering", _STRING_MAP), pa.field("judge", pa.string()),
                                            pa.field("judged_by", pa.string()), pa.field("context_score", pa.float64()),
                                            pa.field("last_turns_score", pa.float64())])),
        pa.field("language", pa.string()), pa.field("unvalidated_language", pa.bool_()), pa.field("kind", pa.string()),
    ]
    if ensemble.category_combination is not None:
        fields += [pa.field("categories", _SCORE_MAP), pa.field("top_category", pa.string()),
                   pa.field("harm_categories", _SCORE_MAP)]
    return pa.schema(fields)


def results_table(ids: pa.Array | pa.ChunkedArray | None, results: Sequence[EnsembleResult], ensemble: Ensemble) -> pa.Table:
    """One output row per result; ``ids`` (the input's id column, its type kept) first when the input has one."""
    schema = output_schema(ensemble, ids.type if ids is not None else None)
    rows = [result.to_dict() for result in results]
    unknown = {name for row in rows for name in row} - set(schema.names)
    if unknown:  # a field added to results without a column here would vanish from the corpus output
        raise RuntimeError(f"result fields without an output column: {', '.join(sorted(unknown))}")
    table = pa.Table.from_pylist(rows, schema=schema.remove(0) if ids is not None else schema)
    return table.add_column(0, schema.field(0), ids) if ids is not None else table


def score_line(row: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """An output row as ``siren-ensemble score`` prints it (its ``line`` aside): maps as objects, and the
    fields ``to_dict`` leaves out when empty left out."""
    return {name: _plain(value, schema.field(name).type) for name, value in row.items()
            if not (value is None and name in OMITTED_WHEN_EMPTY)}


def _plain(value: Any, kind: pa.DataType) -> Any:
    """``value`` as JSON holds it: Arrow maps come out of ``to_pylist`` as lists of pairs."""
    if value is None:
        return None
    if pa.types.is_map(kind):
        return {key: _plain(item, kind.item_type) for key, item in value}
    if pa.types.is_struct(kind):
        return {field.name: _plain(value[field.name], field.type) for field in kind}
    return value
