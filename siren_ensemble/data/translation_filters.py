"""The checks a machine translation must pass to join the training data: not empty, not the input echoed back, not
cut off, a plausible length, written in the target language, and (optionally) the same words back in English."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError
from ..language import detect_languages

#: Why a translation was rejected, in the order the checks run (the first failing one is reported).
REASONS = ("empty", "untranslated", "truncated", "length_ratio", "language", "back_translation")

_QUOTES = {'"': '"', "'": "'", "“": "”", "«": "»", "「": "」", "`": "`"}
_TAGS = re.compile(r"</?text>", re.IGNORECASE)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class FilterOptions:
    #: The language ID of the output must be the target language with at least this confidence.
    min_confidence: float = 0.8
    #: Bounds on characters translated / original, after dividing by the language's length factor.
    min_ratio: float = 0.3
    max_ratio: float = 3.0
    #: Translate every kept output back to English and require this word-overlap F1 with the original (doubles the cost).
    back_translate: bool = False
    min_back_f1: float = 0.4

    def __post_init__(self):
        if not 0 <= self.min_confidence <= 1:
            raise InputError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if not 0 < self.min_ratio <= self.max_ratio:
            raise InputError(f"length ratio bounds must satisfy 0 < min <= max, got [{self.min_ratio}, {self.max_ratio}]")
        if not 0 <= self.min_back_f1 <= 1:
            raise InputError(f"min_back_f1 must be in [0, 1], got {self.min_back_f1}")


@dataclass(frozen=True)
class TranslatedPart:
    """One translated field of a record (``text``, ``prompt`` or ``response``)."""

    field: str
    original: str
    translated: str
    #: The generation used every token it was allowed: the translation is probably cut off.
    truncated: bool = False


@dataclass(frozen=True)
class Rejection:
    reason: str
    field: str
    detail: str


def clean_output(text: str) -> str:
    """The model's answer without the tags of the prompt and without quotes wrapped around all of it."""
    text = _TAGS.sub("", text).strip()
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def first_rejection(parts: Sequence[TranslatedPart], language: str, length_factor: float,
                    options: FilterOptions) -> Rejection | None:
    """The first check a record's translated parts fail (all but back-translation), or None when they pass."""
    for part in parts:
        if not part.translated.strip():
            return Rejection("empty", part.field, "no output")
        if _normalised(part.translated) == _normalised(part.original):
            return Rejection("untranslated", part.field, "the output is the input")
        if part.truncated:
            return Rejection("truncated", part.field, "the output reached max_new_tokens")
        ratio = length_ratio(part.original, part.translated, length_factor)
        if not options.min_ratio <= ratio <= options.max_ratio:
            return Rejection("length_ratio", part.field,
                             f"length ratio {ratio:.2f} outside [{options.min_ratio}, {options.max_ratio}]")
    for part, detected in zip(parts, detect_languages([part.translated for part in parts])):
        if detected.code != language or detected.confidence < options.min_confidence:
            return Rejection("language", part.field, f"read as {detected.code} ({detected.confidence:.2f}), "
                                                     f"wanted {language} (>= {options.min_confidence})")
    return None


def back_translation_rejection(parts: Sequence[TranslatedPart], back: Sequence[str],
                               options: FilterOptions) -> Rejection | None:
    """A rejection when a part's English back-translation shares too few words with its original."""
    for part, english in zip(parts, back, strict=True):
        f1 = word_f1(part.original, english)
        if f1 < options.min_back_f1:
            return Rejection("back_translation", part.field, f"word F1 {f1:.2f} < {options.min_back_f1}: {english[:200]!r}")
    return None


def length_ratio(original: str, translated: str, length_factor: float = 1.0) -> float:
    """Characters of the translation per character of the original, over what the language usually takes."""
    return len(translated.strip()) / max(len(original.strip()), 1) / length_factor


def word_f1(reference: str, candidate: str) -> float:
    """F1 of the two texts' sets of lowercased words (1.0 for two texts without words)."""
    expected, got = set(_WORD.findall(reference.lower())), set(_WORD.findall(candidate.lower()))
    if not expected and not got:
        return 1.0
    return 2 * len(expected & got) / (len(expected) + len(got))


def _normalised(text: str) -> str:
    return " ".join(text.casefold().split())
