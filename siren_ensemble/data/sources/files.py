"""Readers for the file formats the data packages use; every parse error names the file and line."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path
from typing import Any, Iterator

import yaml

from ...errors import InputError


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: malformed JSON ({error.msg} at line {error.lineno})") from None


def read_json_list(path: Path, key: str) -> list:
    """The list under ``key`` of the JSON object in ``path``."""
    data = read_json(path)
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise InputError(f"{path}: expected an object with a `{key}` list")
    return items


def read_jsonl(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise InputError(f"{path}: line {number}: malformed JSON ({error.msg})") from None


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise InputError(f"{path}: malformed YAML ({error})") from None


def read_csv_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) of a CSV file whose header holds ``columns`` (a byte-order mark is skipped); a missing column is an
    error naming the file."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in columns if column not in (reader.fieldnames or ())]
        if missing:
            raise InputError(f"{path}: missing columns {', '.join(missing)}")
        for row in reader:
            yield reader.line_num, row


def read_commented_csv(path: Path) -> list[dict[str, str]]:
    """A CSV whose leading ``#`` lines are metadata (pyrit's scorer evaluation sets)."""
    with open(path, encoding="utf-8", newline="") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    return list(csv.DictReader(lines))


def python_literal(path: Path, name: str, kind: type) -> Any:
    """The value of the module-level ``name = <literal>`` in ``path``, a non-empty ``kind`` (dict, list)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as error:
        raise InputError(f"{path}: line {error.lineno}: not parseable Python ({error.msg})") from None
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(target, ast.Name) and target.id == name for target in targets) and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise InputError(f"{path}: line {node.lineno}: {name} is not a literal") from None
            if not isinstance(value, kind) or not value:
                raise InputError(f"{path}: line {node.lineno}: {name} is not a non-empty {kind.__name__}")
            return value
    raise InputError(f"{path}: no module-level {name}")
