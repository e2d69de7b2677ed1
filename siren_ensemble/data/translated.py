"""Translated records (``data translate``'s files) joined into a build.

Each translation goes to the split of the record it translates, found by ``translated_from`` (the source record's
:func:`~siren_ensemble.data.translate.translation_key`), or else by ``translated_from_content`` (the hash of its
text: a build that grew can rename the record's group), so a translation never sits in another split than its
original and the split stays leak-free; it takes its original's group. A translation whose original is not in the
build is an error naming its file and line: placing it by guess could leak.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError
from .records import SPLITS, SafetyRecord, parse_record
from .translate import ORIGIN_CONTENT_FIELD, ORIGIN_FIELD, REJECTED_FILE, content_key, translation_key

#: ``<split>.<language>.jsonl``, the files ``data translate`` writes (``rejected.jsonl`` is not one).
TRANSLATION_FILE = re.compile(r"^(?P<split>train|validation|test)\.(?P<language>[a-z]{2,3})\.jsonl$")


@dataclass(frozen=True)
class Translation:
    record: SafetyRecord
    #: ``translation_key`` of the record it translates.
    origin: str
    #: ``content_key`` of the record it translates (None in files written before it existed).
    origin_content: str | None
    #: "<file>: line <n>", for errors.
    where: str


@dataclass
class TranslationStats:
    #: sha256 of every translation file read, by path as given.
    files: dict[str, str] = field(default_factory=dict)
    #: Translations added, per split and language.
    added: dict[str, Counter] = field(default_factory=lambda: {name: Counter() for name in SPLITS})
    #: The same (original, language) found again (in a second directory, say): the first one is kept.
    repeated: int = 0

    def to_json(self) -> dict:
        return {"files": dict(sorted(self.files.items())),
                "records": {name: dict(sorted(self.added[name].items())) for name in SPLITS},
                "repeated_dropped": self.repeated}


def translation_files(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: translations directory not found")
    files = sorted(path for path in directory.iterdir() if TRANSLATION_FILE.match(path.name))
    if not files:
        raise InputError(f"{directory}: no translation files (<split>.<language>.jsonl, as `data translate` writes; "
                         f"{REJECTED_FILE} holds rejections only)")
    return files


def read_translations(directories: Sequence[str | Path], stats: TranslationStats) -> list[Translation]:
    """Every kept translation in ``directories``, each checked: its language matches its file's, it names the record
    it translates, and it is a valid record."""
    translations = []
    for directory in directories:
        for path in translation_files(directory):
            language = TRANSLATION_FILE.match(path.name)["language"]
            data = path.read_bytes()
            stats.files[str(path)] = hashlib.sha256(data).hexdigest()
            for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
                if line.strip():
                    translations.append(_translation(line, language, f"{path}: line {number}"))
    return translations


def _translation(line: str, language: str, where: str) -> Translation:
    record, item = parse_record(line, where)
    origin = item.get(ORIGIN_FIELD)
    if not isinstance(origin, str) or not origin:
        raise InputError(f"{where}: no `{ORIGIN_FIELD}`; not a file written by `data translate`")
    if record.language != language:
        raise InputError(f"{where}: `language` is {record.language!r}, but the file holds {language!r} translations")
    content = item.get(ORIGIN_CONTENT_FIELD)
    if content is not None and not isinstance(content, str):
        raise InputError(f"{where}: `{ORIGIN_CONTENT_FIELD}` must be a string, got {content!r}")
    return Translation(record, origin, content, where)


def add_translations(splits: dict[str, list[SafetyRecord]], translations: Iterable[Translation],
                     stats: TranslationStats) -> None:
    """Append each translation to the split that holds its original (in place)."""
    home: dict[str, tuple[str, SafetyRecord]] = {}
    by_content: dict[str, tuple[str, SafetyRecord]] = {}
    for name in SPLITS:
        for record in splits[name]:
            if record.language is None:
                home.setdefault(translation_key(record), (name, record))
                by_content.setdefault(content_key(record), (name, record))
    seen: set[tuple[str, str]] = set()
    for translation in translations:
        record = translation.record
        found = home.get(translation.origin) or by_content.get(translation.origin_content or "")
        if found is None:
            raise InputError(f"{translation.where}: the record it translates ({ORIGIN_FIELD} "
                             f"{translation.origin[:12]}...) is not in this build; translate a split built with the "
                             f"same sources and options (`data translate --data <that split>`)")
        split, original = found
        if (record.label, record.source, record.level) != (original.label, original.source, original.level):
            raise InputError(f"{translation.where}: label, source or level differ from the record it translates "
                             f"({original.source}, label {original.label}, {original.level} level)")
        once = (translation_key(original), record.language)
        if once in seen:
            stats.repeated += 1
            continue
        seen.add(once)
        splits[split].append(replace(record, group=original.group))
        stats.added[split][record.language] += 1
