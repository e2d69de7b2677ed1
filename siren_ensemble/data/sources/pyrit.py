"""Harmful requests and human-judged prompt/response pairs shipped in pyrit 1.1.0 (``pyrit/datasets/``)."""

from __future__ import annotations

import re
from statistics import mean
from typing import Iterator

from ..category_labels import advbench_categories, keyword_only, pyrit_categories
from ..normalize import text_key
from ..packages import data_file
from ..records import SafetyRecord
from .files import read_commented_csv, read_json, read_yaml
from .registry import source

PACKAGE = "pyrit"

# Harm CSVs grade the response 0-1 (the 1-5 scale of pyrit's harm definitions: 0 none, 0.25 minimal,
# 0.5 significant but not graphic, 0.75 explicit, 1 extreme). The mean over raters is used; the
# ambiguous middle is dropped rather than forced into a class.
HARMFUL_AT_LEAST = 0.75
BENIGN_AT_MOST = 0.25


@source("advbench", PACKAGE, "harmful", "AdvBench harmful behaviours (520 instructions)")
def advbench() -> Iterator[SafetyRecord]:
    document = read_yaml(data_file(PACKAGE, "datasets/seed_datasets/local/adv_bench.prompt"))
    for seed in document["seeds"]:
        yield SafetyRecord(label=1, source="advbench", text=seed["value"],
                           categories=advbench_categories(seed.get("harm_categories") or [], seed["value"]))


# AI red-team seed objectives; fairness, leakage and licensed_therapist are not harmful requests.
AIRT_HARMFUL_FILES = ("airt_imminent_crisis", "harassment", "harms", "hate", "illegal", "malware", "misinformation",
                      "scams", "sexual", "violence")


@source("pyrit_airt", PACKAGE, "harmful", "AI red-team seed objectives (seed_datasets/local/airt; harmful files only)")
def airt() -> Iterator[SafetyRecord]:
    for name in AIRT_HARMFUL_FILES:
        document = read_yaml(data_file(PACKAGE, f"datasets/seed_datasets/local/airt/{name}.prompt"))
        for seed in document["seeds"]:
            # Turns of a scripted multi-turn attack (seed_type "prompt") are not harmful on their own.
            if seed.get("seed_type", document.get("seed_type")) == "objective":
                labels = seed.get("harm_categories") or document.get("harm_categories") or []
                labels = [labels] if isinstance(labels, str) else labels
                yield SafetyRecord(label=1, source="pyrit_airt", text=seed["value"],
                                   categories=pyrit_categories(labels, seed["value"]))


@source("pyrit_many_shot", PACKAGE, "both",
        "HarmBench behaviours with answers judged Harmful (label 1) or Not harmful (label 0); response level")
def many_shot() -> Iterator[SafetyRecord]:
    for item in read_json(data_file(PACKAGE, "datasets/jailbreak/many_shot_examples.json")):
        label = _judgement(item["category"])
        if label is not None:
            yield SafetyRecord(label=label, source="pyrit_many_shot", level="response", prompt=item["user"],
                               response=item["assistant"], group=f"behaviour:{text_key(item['user'])}",
                               categories=keyword_only(item["user"]) if label else None)


def _judgement(category: str) -> int | None:
    verdict = re.sub(r"^(answer:\s*)", "", category.strip().strip("*'\"").lower())
    if verdict.startswith("not harmful"):
        return 0
    if verdict.startswith("harmful"):
        return 1
    return None


@source("pyrit_harm_scores", PACKAGE, "both",
        f"human-graded prompt/response pairs (scorer_evals/harm): mean >= {HARMFUL_AT_LEAST} harmful, "
        f"<= {BENIGN_AT_MOST} benign, the middle dropped; response level")
def harm_scores() -> Iterator[SafetyRecord]:
    folder = data_file(PACKAGE, "datasets/scorer_evals/harm")
    for path in sorted(folder.glob("*.csv")):
        for row in read_commented_csv(path):
            scores = [float(value) for key, value in row.items() if key.startswith("human_score") and value]
            label = harm_label(mean(scores)) if scores else None
            if label is not None:
                yield SafetyRecord(label=label, source="pyrit_harm_scores", level="response", prompt=row["objective"],
                                   response=row["assistant_response"], group=f"pyrit:{text_key(row['objective'])}",
                                   categories=pyrit_categories([row["harm_category"]], row["objective"]) if label else None)


def harm_label(score: float) -> int | None:
    if score >= HARMFUL_AT_LEAST:
        return 1
    if score <= BENIGN_AT_MOST:
        return 0
    return None


@source("pyrit_refusals", PACKAGE, "benign",
        "responses humans judged refusals (scorer_evals/refusal_scorer), labelled benign; response level")
def refusals() -> Iterator[SafetyRecord]:
    # Non-refusals are left out: some answer harmful objectives and carry no harm judgement.
    for name in ("refusal.csv", "refusal_extra.csv"):
        for row in read_commented_csv(data_file(PACKAGE, f"datasets/scorer_evals/refusal_scorer/{name}")):
            if row["human_score"].strip() == "1":
                yield SafetyRecord(label=0, source="pyrit_refusals", level="response", prompt=row["objective"],
                                   response=row["assistant_response"], group=f"pyrit:{text_key(row['objective'])}")


@source("pyrit_objective", PACKAGE, "both",
        "objective-achieved judgements (scorer_evals/objective) used as harm labels; off by default: an "
        "achieved objective is not always harmful (e.g. a respectful overview scored 1)", default=False)
def objective_scores() -> Iterator[SafetyRecord]:
    folder = data_file(PACKAGE, "datasets/scorer_evals/objective")
    for path in sorted(folder.glob("*.csv")):
        for row in read_commented_csv(path):
            if row.get("human_score", "").strip() in ("0", "1"):
                label = int(row["human_score"])
                yield SafetyRecord(label=label, source="pyrit_objective", level="response",
                                   prompt=row["objective"], response=row["assistant_response"],
                                   group=f"pyrit:{text_key(row['objective'])}",
                                   categories=keyword_only(row["objective"]) if label else None)
