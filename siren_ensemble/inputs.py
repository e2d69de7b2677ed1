"""Texts to score from files: plain text (one per line) or JSONL; every error names its line.

A JSONL line holds ``text``, or ``prompt`` and/or ``response``, or ``messages`` (a chat, judged on its
last user turn and answer in the context of the turns before: ``siren_ensemble.conversation``).
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import files
from .conversation import Conversation
from .errors import InputError
from .input_kinds import PromptResponse

_MAX_REPORTED = 5


@dataclass(frozen=True)
class InputRecord:
    #: What is scored; for a conversation, its judged turns as one text (for display, and scoring them alone).
    text: str
    line: int | None = None
    id: Any = None
    label: int | None = None
    conversation: Conversation | None = None
    #: A ``prompt``/``response`` line's parts (scored on the response route when the response is not empty).
    pair: PromptResponse | None = None

    @property
    def scored(self) -> str | PromptResponse | Conversation:
        if self.conversation is not None:
            return self.conversation
        return self.pair if self.pair is not None else self.text


def read_inputs(path: str, require_label: bool = False) -> list[InputRecord]:
    """Read ``path`` (``-`` for stdin). ``.jsonl`` files, and stdin starting with ``{``, are JSONL.

    Read line by line under ``files.MAX_INPUT_BYTES`` in all and ``files.MAX_INPUT_LINE_BYTES`` a line.
    """
    name = "<stdin>" if path == "-" else path
    if path == "-":
        decoded, problems = _decode_lines(sys.stdin.buffer, name)
    else:
        files.check_file(Path(path), files.MAX_INPUT_BYTES, InputError, "input file", allow_pipe=True)
        try:
            with open(path, "rb") as stream:
                decoded, problems = _decode_lines(stream, name)
        except OSError as error:
            raise InputError(f"{path}: cannot read ({error.strerror})") from None
    content = [(number, line) for number, line in decoded if line.strip()]
    as_jsonl = path.endswith(".jsonl") or (path == "-" and bool(content) and content[0][1].lstrip().startswith("{"))
    if require_label and not as_jsonl:
        raise InputError(f"{name}: labelled data must be JSONL with a `label` field on each line")
    records = []
    for number, line in content:
        try:
            records.append(_parse_jsonl_line(line, number, require_label) if as_jsonl else InputRecord(text=line, line=number))
        except InputError as error:
            problems.append(f"line {number}: {error}")
    if problems:
        shown = "; ".join(sorted(problems, key=_line_number)[:_MAX_REPORTED])
        more = f" (and {len(problems) - _MAX_REPORTED} more)" if len(problems) > _MAX_REPORTED else ""
        raise InputError(f"{name}: {shown}{more}")
    if not records:
        raise InputError(f"{name}: no inputs (the file is empty or blank)")
    return records


def _decode_lines(stream: BinaryIO, name: str) -> tuple[list[tuple[int, str]], list[str]]:
    """Numbered lines of UTF-8 text, and a problem per line that is not; over a limit is an InputError."""
    line_limit, total_limit = files.MAX_INPUT_LINE_BYTES, files.MAX_INPUT_BYTES
    decoded, problems, total = [], [], 0
    for number in itertools.count(1):
        raw = stream.readline(line_limit + 2)  # room for the line's own "\r\n"
        if not raw:
            break
        total += len(raw)
        if total > total_limit:
            raise InputError(f"{name}: over the limit of {total_limit:,} bytes for an input file")
        line = raw.removesuffix(b"\n").rstrip(b"\r")
        if len(line) > line_limit:
            raise InputError(f"{name}: line {number}: over the limit of {line_limit:,} bytes for one line")
        try:
            decoded.append((number, line.decode("utf-8")))
        except UnicodeDecodeError as error:
            problems.append(f"line {number}: invalid UTF-8 at byte {error.start} of the line")
    return decoded, problems


def parse_text_object(line: str) -> tuple[dict, bool]:
    """A JSONL line holding ``text``, or ``prompt`` and/or ``response`` (strings); says whether it is a pair."""
    return _text_fields(json_object(line))


def json_object(line: str) -> dict:
    """A JSONL line's object; an InputError when it is not JSON or not an object."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as error:
        raise InputError(f"malformed JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(item, dict):
        raise InputError(f"expected a JSON object, got {type(item).__name__}")
    return item


def _text_fields(item: dict) -> tuple[dict, bool]:
    has_text = "text" in item
    has_pair = "prompt" in item or "response" in item
    if has_text == has_pair:
        raise InputError("needs either `text` or `prompt`/`response`")
    for key in ("text", "prompt", "response"):
        if key in item and not isinstance(item[key], str):
            raise InputError(f"`{key}` must be a string, got {type(item[key]).__name__}")
    return item, has_pair


def _parse_jsonl_line(line: str, number: int, require_label: bool) -> InputRecord:
    return record_of(json_object(line), number, require_label)


def record_of(item: dict, line: int | None = None, require_label: bool = False) -> InputRecord:
    """The record a JSONL line's object holds (``text``, ``prompt``/``response`` or ``messages``, ``id``, ``label``);
    a corpus row on Ray is read by the same rules."""
    label = parse_label(item.get("label")) if require_label else None
    if "messages" in item:
        if {"text", "prompt", "response"} & set(item):
            raise InputError("give either `messages` or `text`/`prompt`/`response`, not both")
        conversation = Conversation.parse(item["messages"])
        return InputRecord(text=conversation.last_turns_text(), line=line, id=item.get("id"), label=label,
                           conversation=conversation)
    if not {"text", "prompt", "response"} & set(item):
        raise InputError("needs `text`, `prompt`/`response`, or `messages`")
    item, is_pair = _text_fields(item)
    if is_pair:
        pair = PromptResponse(item.get("prompt"), item.get("response"))
        return InputRecord(text=pair.text, line=line, id=item.get("id"), label=label, pair=pair)
    return InputRecord(text=item["text"], line=line, id=item.get("id"), label=label)


def parse_label(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.lower() in ("harmful", "unsafe", "benign", "safe"):
        return int(value.lower() in ("harmful", "unsafe"))
    raise InputError(f"`label` must be 0/1, true/false or harmful/benign, got {value!r}")


def _line_number(problem: str) -> int:
    return int(problem.split(":", 1)[0].removeprefix("line "))
