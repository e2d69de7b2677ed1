"""data build --translations: each translation joins the split of the record it translates."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from siren_ensemble.cli import cli
from siren_ensemble.data.build import build_dataset
from siren_ensemble.data.records import SPLITS
from siren_ensemble.data.translate import ORIGIN_CONTENT_FIELD, ORIGIN_FIELD, content_key, translation_key
from siren_ensemble.errors import InputError

from .test_data_build import all_records, options, synthetic_sources  # noqa: F401  (the fixture)


def _translated(record, language):
    fields = ("prompt", "response") if record.level == "response" else ("text",)
    text = {name: f"[{language}] {getattr(record, name)}" for name in fields}
    return {**replace(record, language=language, **text).to_json(), ORIGIN_FIELD: translation_key(record),
            ORIGIN_CONTENT_FIELD: content_key(record)}


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture
def base(synthetic_sources):  # noqa: F811
    return build_dataset(options(synthetic_sources, max_per_source=60))


def _originals(base):
    """Two records of each split, a response-level one among them where a split has one."""
    chosen = []
    for name in SPLITS:
        records = base.splits[name]
        pairs = [r for r in records if r.level == "response"][:1]
        chosen += [(name, r) for r in pairs + [r for r in records if r.level == "prompt"][:2 - len(pairs)]]
    return chosen


def test_each_translation_joins_its_originals_split_and_the_manifest_counts_them(base, synthetic_sources, tmp_path):  # noqa: F811
    chosen = _originals(base)
    _write(tmp_path / "t" / "train.es.jsonl", [_translated(record, "es") for _, record in chosen])
    _write(tmp_path / "t" / "train.fr.jsonl", [_translated(record, "fr") for _, record in chosen[:2]])
    (tmp_path / "t" / "rejected.jsonl").write_text('{"key": "x", "language": "es", "reason": "language"}\n')
    built = build_dataset(options(synthetic_sources, max_per_source=60, translations=(str(tmp_path / "t"),)))
    for name in SPLITS:
        english = [r for r in built.splits[name] if r.language is None]
        assert sorted(map(translation_key, english)) == sorted(map(translation_key, base.splits[name]))
    where = {}
    for name in SPLITS:
        for record in built.splits[name]:
            if record.language == "es":
                where.setdefault((record.group, record.label, record.scored_text), []).append(name)
    for split, record in chosen:
        translated = replace(record, **{key: f"[es] {getattr(record, key)}" for key in ("text", "prompt", "response")
                                        if getattr(record, key)})
        assert where[(record.group, record.label, translated.scored_text)] == [split]
    from siren_ensemble.data.manifest import build_manifest, format_tables
    manifest = build_manifest(built, {name: "x" for name in SPLITS})
    counts = manifest["translations"]["records"]
    assert sum(counts[name].get("es", 0) for name in SPLITS) == len(chosen)
    assert sum(counts[name].get("fr", 0) for name in SPLITS) == 2
    assert len(manifest["translations"]["files"]) == 2 and list(manifest["options"]["translations"]) == [str(tmp_path / "t")]
    assert "translations: train" in format_tables(manifest)
    assert "translations" not in build_manifest(base, {name: "x" for name in SPLITS})
    assert "translations" not in build_manifest(base, {name: "x" for name in SPLITS})["options"]


def test_the_same_translation_in_two_directories_is_kept_once(base, synthetic_sources, tmp_path):  # noqa: F811
    chosen = _originals(base)[:2]
    for folder in ("a", "b"):
        _write(tmp_path / folder / "validation.es.jsonl", [_translated(record, "es") for _, record in chosen])
    built = build_dataset(options(synthetic_sources, max_per_source=60,
                                  translations=(str(tmp_path / "a"), str(tmp_path / "b"))))
    assert sum(1 for record in all_records(built) if record.language == "es") == 2
    assert built.stats.translations.repeated == 2


@pytest.mark.parametrize("change, message", [
    (lambda row: {**row, ORIGIN_FIELD: "0" * 64, ORIGIN_CONTENT_FIELD: "1" * 64},
     r"t/train.es.jsonl: line 2: the record it translates .* is not in this build"),
    (lambda row: {**row, "language": "de"}, r"t/train.es.jsonl: line 2: `language` is 'de', but the file holds 'es'"),
    (lambda row: {k: v for k, v in row.items() if k != ORIGIN_FIELD}, r"line 2: no `translated_from`"),
    (lambda row: {**row, "label": 1 - row["label"], **({"categories": ["violence"]} if row["label"] == 0 else {})}
     | ({} if row["label"] == 0 else {"categories": None}), r"line 2: label, source or level differ"),
    (lambda row: {**row, "label": "maybe"}, r"t/train.es.jsonl: line 2: "),
])
def test_a_bad_translation_names_its_file_and_line(base, synthetic_sources, tmp_path, change, message):  # noqa: F811
    first, second = (_translated(record, "es") for _, record in _originals(base)[:2])
    _write(tmp_path / "t" / "train.es.jsonl", [first, change(second)])
    with pytest.raises(InputError, match=message):
        build_dataset(options(synthetic_sources, max_per_source=60, translations=(str(tmp_path / "t"),)))


def test_a_directory_without_translation_files_is_refused(synthetic_sources, tmp_path):  # noqa: F811
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "rejected.jsonl").write_text("")
    with pytest.raises(InputError, match=r"t: no translation files \(<split>.<language>.jsonl"):
        build_dataset(options(synthetic_sources, max_per_source=60, translations=(str(tmp_path / "t"),)))


def test_the_command_builds_with_translations(base, synthetic_sources, tmp_path):  # noqa: F811
    _write(tmp_path / "t" / "test.it.jsonl", [_translated(record, "it") for _, record in _originals(base)])
    result = CliRunner().invoke(cli, ["data", "build", "--out", str(tmp_path / "out"), "--sources",
                                      ",".join(synthetic_sources), "--max-per-source", "60", "--max-chars", "1000",
                                      "--translations", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "translations: train it 2; validation it 2; test it 2" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["translations"]["records"] == {"train": {"it": 2}, "validation": {"it": 2}, "test": {"it": 2}}
    missing = CliRunner().invoke(cli, ["data", "build", "--out", str(tmp_path / "o2"), "--translations",
                                       str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "nowhere" in missing.output


def test_a_translation_finds_its_original_by_content_when_a_grown_build_renamed_its_group(base, synthetic_sources,  # noqa: F811
                                                                                         tmp_path):
    (split, record), = _originals(base)[:1]
    renamed = replace(record, group="the group it had in an older build")
    row = {**_translated(renamed, "es"), ORIGIN_CONTENT_FIELD: content_key(record)}
    assert row[ORIGIN_FIELD] != translation_key(record)
    _write(tmp_path / "t" / "train.es.jsonl", [row])
    built = build_dataset(options(synthetic_sources, max_per_source=60, translations=(str(tmp_path / "t"),)))
    placed = [(name, r) for name in SPLITS for r in built.splits[name] if r.language == "es"]
    assert [(name, r.group) for name, r in placed] == [(split, record.group)]
    without_content = {k: v for k, v in row.items() if k != ORIGIN_CONTENT_FIELD}
    _write(tmp_path / "t" / "train.es.jsonl", [without_content])
    with pytest.raises(InputError, match="is not in this build"):
        build_dataset(options(synthetic_sources, max_per_source=60, translations=(str(tmp_path / "t"),)))
