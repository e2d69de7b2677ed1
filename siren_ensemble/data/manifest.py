"""The manifest of a split directory: what is in it, where it came from, how balanced it is."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from .forms import FORMS, surface_forms
from .packages import installed_version
from .records import SPLITS
from ..taxonomy import CATEGORY_KEYS

if TYPE_CHECKING:
    from .build import BuiltDataset

MANIFEST_VERSION = 1
CLASS_NAMES = {0: "benign", 1: "harmful"}


def _options(dataset: BuiltDataset) -> dict:
    options = {**asdict(dataset.options), "sources": [entry.name for entry in dataset.sources]}
    # Left out when off, so a sequential build's manifest (and the fingerprint its heads recorded) stays as it was.
    for key in ("draws_by_record", "translations"):
        if not options[key]:
            del options[key]
    return options


def build_manifest(dataset: BuiltDataset, hashes: dict[str, str]) -> dict:
    options = dataset.options
    stats = dataset.stats
    records = [record for name in SPLITS for record in dataset.splits[name]]
    train_classes = Counter(record.label for record in dataset.splits["train"])
    return {
        "manifest_version": MANIFEST_VERSION,
        "created_by": f"siren-ensemble {_own_version()}",
        "seed": options.seed,
        "options": _options(dataset),
        "packages": {name: installed_version(name) for name in sorted({e.package for e in dataset.sources if e.package})},
        "records": len(records),
        "splits": {
            name: {
                "file": f"{name}.jsonl",
                "records": len(dataset.splits[name]),
                "sha256": hashes[name],
                "classes": _classes(dataset.splits[name]),
                "levels": dict(sorted(Counter(r.level for r in dataset.splits[name]).items())),
                "groups": len({r.group for r in dataset.splits[name]}),
            }
            for name in SPLITS
        },
        # Weights that make both classes count equally in train (n / (2 * n_class)), for the trainer.
        "class_weights": {
            CLASS_NAMES[label]: round(sum(train_classes.values()) / (2 * count), 6)
            for label, count in sorted(train_classes.items())
        },
        "sources": _sources(dataset),
        "surface_forms": surface_form_shares(records),
        "surface_forms_by_level": {
            level: surface_form_shares([r for r in records if r.level == level]) for level in ("prompt", "response")
        },
        "cleaning": {
            "loaded": dict(sorted(stats.loaded.items())),
            "empty_dropped": dict(sorted((k, v) for k, v in stats.empty_dropped.items() if v)),
            "truncated_to_max_chars_in_splits": dict(sorted((k, v) for k, v in stats.truncated.items() if v)),
            "capped_at_max_per_source": dict(sorted((k, v) for k, v in stats.capped.items() if v)),
            **stats.dedupe.to_json(),
        },
        "characters": {name: sum(len(r.scored_text) for r in dataset.splits[name]) for name in SPLITS},
        # Only when a build has translations, as for categories below.
        **({"translations": stats.translations.to_json()} if options.translations else {}),
        # Only when records carry categories: a build without them keeps the manifest it had before they existed.
        **({"categories": {name: category_counts(dataset.splits[name]) for name in SPLITS}}
           if any(r.categories for name in SPLITS for r in dataset.splits[name]) else {}),
    }


def category_counts(records) -> dict[str, int]:
    """Harmful records per harm category (a record counts once per category), and how many have none."""
    counts = Counter(key for record in records if record.label == 1 for key in record.categories or ())
    return {**{key: counts[key] for key in CATEGORY_KEYS},
            "uncategorised_harmful": sum(1 for record in records if record.label == 1 and not record.categories)}


def _classes(records) -> dict[str, int]:
    counts = Counter(record.label for record in records)
    return {CLASS_NAMES[label]: counts.get(label, 0) for label in (0, 1)}


def _sources(dataset: BuiltDataset) -> dict:
    registered = {entry.name: entry for entry in dataset.sources}
    names = sorted({record.source for name in SPLITS for record in dataset.splits[name]})
    summary = {}
    for source_name in names:
        entry = registered.get(source_name)
        per_split = {name: _classes([r for r in dataset.splits[name] if r.source == source_name]) for name in SPLITS}
        summary[source_name] = {
            "package": (entry.package if entry else None) or "(none)",
            "labels": entry.labels if entry else _labels_present(per_split),
            "eval_only": bool(entry and entry.eval_only),
            "records": sum(sum(classes.values()) for classes in per_split.values()),
            "splits": per_split,
        }
    return summary


def _labels_present(per_split: dict) -> str:
    present = {name for classes in per_split.values() for name, count in classes.items() if count}
    return "both" if len(present) == 2 else next(iter(present), "none")


def surface_form_shares(records) -> dict[str, dict]:
    """Per class: how many records, and the share showing each surface form (see forms.py)."""
    shares = {}
    for label, class_name in CLASS_NAMES.items():
        members = [record for record in records if record.label == label]
        counts = Counter(form for record in members for form in surface_forms(record))
        shares[class_name] = {
            "records": len(members),
            **{form: round(counts[form] / len(members), 4) if members else 0.0 for form in FORMS},
        }
    return shares


def write_manifest(path: Path, manifest: dict) -> None:
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def format_tables(manifest: dict) -> str:
    """Plain-text tables of a manifest: records per source, class and split; surface forms per class."""
    lines = [f"{'source':<22} {'train b/h':>11} {'valid b/h':>11} {'test b/h':>11}"]
    for name, summary in manifest["sources"].items():
        cells = [f"{s['benign']}/{s['harmful']}" for s in (summary["splits"][split] for split in SPLITS)]
        lines.append(f"{name:<22} " + " ".join(f"{cell:>11}" for cell in cells))
    totals = [f"{s['classes']['benign']}/{s['classes']['harmful']}" for s in manifest["splits"].values()]
    lines.append(f"{'total':<22} " + " ".join(f"{cell:>11}" for cell in totals))
    lines.append("")
    columns = [("all", manifest["surface_forms"]), *manifest["surface_forms_by_level"].items()]
    lines.append(f"{'surface form':<18} " + " ".join(f"{name + ' b/h':>17}" for name, _ in columns))
    for form in ("records", *FORMS):
        cells = []
        for _, shares in columns:
            benign, harmful = shares["benign"][form], shares["harmful"][form]
            cells.append(f"{benign}/{harmful}" if form == "records" else f"{benign:.1%}/{harmful:.1%}")
        lines.append(f"{form:<18} " + " ".join(f"{cell:>17}" for cell in cells))
    if "translations" in manifest:
        added = manifest["translations"]["records"]
        cells = [", ".join(f"{code} {count}" for code, count in added[split].items()) or "none" for split in SPLITS]
        lines.append("\ntranslations: " + "; ".join(f"{split} {cell}" for split, cell in zip(SPLITS, cells)))
    weights = ", ".join(f"{k} {v:.3f}" for k, v in manifest["class_weights"].items())
    lines.append(f"\nclass weights (train): {weights}")
    return "\n".join(lines)


def _own_version() -> str:
    try:
        return version("siren-ensemble")
    except PackageNotFoundError:
        return "unknown"
