"""The common record every loader produces, and the JSONL files and split directories that hold them.

A split directory holds ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` and ``manifest.json``.
Label 1 is harmful, 0 benign. A prompt-level record carries ``text``; a response-level record carries
``prompt`` and ``response`` and is judged on the response. A harmful record may carry ``categories``,
keys of our harm taxonomy (``siren_ensemble.taxonomy``); a benign record never does. A translated record
carries ``language`` (an ISO 639 code); records without it are English (or unknown), as every source's are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Literal

from ..errors import InputError
from ..inputs import parse_label, parse_text_object
from ..taxonomy import check_categories
from ..text import join_prompt_response

SPLITS = ("train", "validation", "test")
Level = Literal["prompt", "response"]


@dataclass(frozen=True)
class SafetyRecord:
    label: int
    source: str
    level: Level = "prompt"
    text: str | None = None
    prompt: str | None = None
    response: str | None = None
    group: str | None = None
    #: Harm taxonomy keys (harmful records only); None: not known (every benign record, some harmful ones).
    categories: tuple[str, ...] | None = None
    #: ISO 639 code of a translated record ("hi", "es", ...); None: English or unknown. Absent from the JSON when None,
    #: so the files and hashes of splits built before it existed do not change.
    language: str | None = None

    def __post_init__(self):
        if self.categories is not None and self.label != 1:
            raise ValueError(f"a benign record has no categories (got {self.categories} on a {self.source} record)")

    @property
    def scored_text(self) -> str:
        """What a head reads: the text, or prompt and response joined as the runtime joins them."""
        if self.level == "response":
            return join_prompt_response(self.prompt, self.response)
        return self.text or ""

    def to_json(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


def write_records(path: str | Path, records: Iterable[SafetyRecord]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def read_records(path: str | Path) -> list[SafetyRecord]:
    """Read one JSONL file of records; every problem names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: data file not found")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                records.append(parse_record(line, f"{path}: line {number}")[0])
    if not records:
        raise InputError(f"{path}: no records")
    return records


def read_dataset(path: str | Path, split: str = "test") -> list[SafetyRecord]:
    """Records from a split directory's ``split`` file, or from ``path`` itself when it is a JSONL file."""
    path = Path(path)
    if path.is_dir():
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return read_records(path / f"{split}.jsonl")
    return read_records(path)


def parse_record(line: str, where: str) -> tuple[SafetyRecord, dict]:
    """One JSONL line's record, and the object it was read from (for fields a record does not keep)."""
    try:
        item, is_pair = parse_text_object(line)
        label = parse_label(item.get("label"))
    except InputError as error:
        raise InputError(f"{where}: {error}") from None
    level = item.get("level", "response" if is_pair else "prompt")
    if level not in ("prompt", "response"):
        raise InputError(f"{where}: `level` must be prompt or response, got {level!r}")
    return SafetyRecord(
        label=label, source=str(item.get("source", "unknown")), level=level,
        text=item.get("text"), prompt=item.get("prompt"), response=item.get("response"),
        group=item.get("group"), categories=_categories(item.get("categories"), label, where),
        language=_language(item.get("language"), where),
    ), item


def _language(value, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: `language` must be a language code such as \"hi\", got {value!r}")
    return value


def _categories(value, label: int, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(key, str) for key in value):
        raise InputError(f"{where}: `categories` must be a list of category names, got {value!r}")
    if label != 1:
        raise InputError(f"{where}: `categories` on a benign record (label 0); only harmful records have categories")
    try:
        return check_categories(value) or None
    except ValueError as error:
        raise InputError(f"{where}: `categories`: {error}") from None
