"""Text normalisation and the key that decides when two records say the same thing."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import replace

from .records import SafetyRecord

_HORIZONTAL_WHITESPACE = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" *\n *")
_THREE_OR_MORE_NEWLINES = re.compile(r"\n{3,}")
_NOT_WORD = re.compile(r"[\W_]+")


def normalize_text(text: str) -> str:
    """Unicode NFC, one space for any run of spaces/tabs, at most one blank line, stripped."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _HORIZONTAL_WHITESPACE.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    return _THREE_OR_MORE_NEWLINES.sub("\n\n", text).strip()


def text_key(text: str) -> str:
    """Case-, punctuation- and whitespace-blind key: "How to X?" and "how to x." are the same text."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NOT_WORD.sub(" ", folded).split())


def record_key(record: SafetyRecord) -> str:
    """The key of what a head reads: the text, or prompt and response (level-tagged, so a bare prompt
    and the same prompt with an empty response stay distinct)."""
    if record.level == "response":
        return f"response|{text_key(record.prompt or '')}|{text_key(record.response or '')}"
    return f"prompt|{text_key(record.text or '')}"


def prompt_key(record: SafetyRecord) -> str:
    """The key of the request a record is about (its text, or its prompt): records sharing it are one group."""
    return text_key((record.prompt if record.level == "response" else record.text) or "")


def normalize_record(record: SafetyRecord, max_chars: int) -> tuple[SafetyRecord, bool]:
    """Normalise every text field and cut it to ``max_chars`` (a response-level pair shares the budget,
    the prompt taking at most half). Returns the record and whether anything was cut."""
    if record.level == "response":
        prompt = normalize_text(record.prompt or "")
        response = normalize_text(record.response or "")
        prompt_cut = _truncate(prompt, max(max_chars // 2, max_chars - len(response)))
        response_cut = _truncate(response, max_chars - len(prompt_cut))
        cut = prompt_cut != prompt or response_cut != response
        return replace(record, prompt=prompt_cut, response=response_cut), cut
    text = normalize_text(record.text or "")
    text_cut = _truncate(text, max_chars)
    return replace(record, text=text_cut), text_cut != text


def _truncate(text: str, limit: int) -> str:
    """Cut at the last whitespace before ``limit`` characters (or at the limit when there is none)."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    space = max(head.rfind(" "), head.rfind("\n"))
    return (head[:space] if space > limit // 2 else head).rstrip()
