"""Corpus rows in Arrow: the text each input row holds (or why it holds none), and the score fields out.

Input rows carry ``text``, or ``prompt`` and/or ``response``, and an optional ``id``, as the JSONL lines of
``siren-ensemble score --input`` do. Output rows carry the input's ``id`` and the fields of
``EnsembleResult.to_dict``: ``members`` a struct of one float per member, ``errors`` a map (null when
none), ``decided_by`` only for a staged (cascade) ensemble.
"""

from __future__ import annotations

from typing import Any, Sequence

import pyarrow as pa

from ..ensemble import EnsembleResult
from ..errors import InputError
from ..inputs import check_text_fields, text_of

ID_COLUMN = "id"
TEXT_COLUMNS = ("text", "prompt", "response")
#: Set by the JSONL reader on a line that holds no text to score: the reason, naming the file and line.
INPUT_ERROR_COLUMN = "_input_error"
#: What an input problem is recorded as under a result's ``errors`` (a text that fails cleaning: "text rejected").
INPUT_REJECTED = "input rejected"


def check_input_schema(names: Sequence[str], types: Sequence[Any], where: str) -> None:
    """An InputError naming ``where`` unless rows can hold a text: a string ``text``, ``prompt`` or ``response``."""
    present = [name for name in TEXT_COLUMNS if name in names]
    if not present:
        raise InputError(f"{where}: no `text` column (nor `prompt`/`response`); its columns: {', '.join(names) or 'none'}")
    for name in present:
        kind = types[list(names).index(name)]
        if isinstance(kind, pa.DataType) and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
                                                   or pa.types.is_null(kind)):
            raise InputError(f"{where}: column `{name}` holds {kind}, expected strings")


def row_texts(batch: pa.Table) -> list[tuple[str | None, str | None]]:
    """Per row, ``(text, None)``, or ``(None, reason)`` for a row that holds no text to score."""
    columns = {name: batch.column(name).to_pylist() for name in TEXT_COLUMNS if name in batch.column_names}
    problems = (batch.column(INPUT_ERROR_COLUMN).to_pylist() if INPUT_ERROR_COLUMN in batch.column_names
                else [None] * batch.num_rows)
    rows: list[tuple[str | None, str | None]] = []
    for row in range(batch.num_rows):
        if problems[row] is not None:
            rows.append((None, problems[row]))
            continue
        item = {name: values[row] for name, values in columns.items() if values[row] is not None}
        try:
            check_text_fields(item)
        except InputError as error:
            rows.append((None, f"{INPUT_REJECTED}: {error}"))
            continue
        rows.append((text_of(item), None))
    return rows


def output_schema(id_type: pa.DataType | None, member_names: Sequence[str], staged: bool) -> pa.Schema:
    fields = [pa.field(ID_COLUMN, id_type)] if id_type is not None else []
    fields += [
        pa.field("score", pa.float64()), pa.field("is_harmful", pa.bool_()), pa.field("threshold", pa.float64()),
        pa.field("members", pa.struct([pa.field(name, pa.float64()) for name in member_names])),
        pa.field("truncated", pa.bool_()), pa.field("errors", pa.map_(pa.string(), pa.string())),
    ]
    if staged:
        fields.append(pa.field("decided_by", pa.int64()))
    return pa.schema(fields)


def results_table(ids: pa.Array | pa.ChunkedArray | None, results: Sequence[EnsembleResult], member_names: Sequence[str],
                  staged: bool) -> pa.Table:
    """One output row per result; ``ids`` (the input's id column, type kept) first when the input has one."""
    schema = output_schema(ids.type if ids is not None else None, member_names, staged)
    columns: dict[str, Any] = {ID_COLUMN: ids} if ids is not None else {}
    columns |= {
        "score": [result.score for result in results],
        "is_harmful": [result.is_harmful for result in results],
        "threshold": [result.threshold for result in results],
        "members": [result.members for result in results],
        "truncated": [result.truncated for result in results],
        "errors": [list(result.errors.items()) if result.errors else None for result in results],
    }
    if staged:
        columns["decided_by"] = [result.decided_by for result in results]
    arrays = [values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values, type=schema.field(name).type)
              for name, values in columns.items()]
    return pa.table(arrays, schema=schema)


def score_line(row: dict[str, Any]) -> dict[str, Any]:
    """An output row (from ``results_table``) as ``siren-ensemble score`` prints it: ``id`` when set, then the
    result's ``to_dict``."""
    result = EnsembleResult(
        score=row["score"], is_harmful=row["is_harmful"], threshold=row["threshold"], members=row["members"],
        truncated=row["truncated"], errors=dict(row["errors"] or []), decided_by=row.get("decided_by"),
    )
    line = {ID_COLUMN: row[ID_COLUMN]} if row.get(ID_COLUMN) is not None else {}
    return line | result.to_dict()
