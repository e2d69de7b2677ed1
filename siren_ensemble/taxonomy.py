"""Our harm taxonomy: what a category head names, and how it maps onto OpenAI's moderation keys.

The taxonomy is ours (docs/categories.md): fine enough to say what is harmful, coarse enough that
the packaged data has examples of each. Every category maps to the OpenAI moderation keys that
cover it (``weapons`` is both ``illicit/violent`` and ``illicit``); two have no OpenAI key
(``misinformation``, ``privacy``) and appear only in our own output. An OpenAI key's score is the
highest score of the categories that map to it; keys no category maps to are not judged.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Mapping

#: Every key of OpenAI's ``/v1/moderations`` ``categories`` and ``category_scores`` (omni-moderation).
OPENAI_KEYS = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)


@dataclass(frozen=True)
class Category:
    key: str
    description: str
    openai: tuple[str, ...]


CATEGORIES = (
    Category("violence", "killing, assault, torture, terrorism, threats of physical harm", ("violence",)),
    Category("weapons", "making or obtaining weapons, explosives, chemical/biological/nuclear agents",
             ("illicit/violent", "illicit")),
    Category("cyber", "malware, intrusion, exploits, denial of service, credential theft by hacking", ("illicit",)),
    Category("fraud", "scams, phishing, forgery, money laundering, identity theft, spam, cheating", ("illicit",)),
    Category("drugs", "making, buying or selling illegal drugs", ("illicit",)),
    Category("other_crime", "theft, smuggling, trafficking, poaching, evading the law, other illegal acts", ("illicit",)),
    Category("hate", "demeaning or excluding people for a protected attribute; slurs; supremacism", ("hate",)),
    Category("harassment", "bullying, insults, intimidation, stalking, threats against a person", ("harassment",)),
    Category("self_harm", "suicide, self-injury, eating disorders", ("self-harm",)),
    Category("sexual", "sexual content and services between adults, sexual exploitation", ("sexual",)),
    Category("sexual_minors", "any sexual content involving minors, grooming", ("sexual/minors", "sexual")),
    Category("misinformation", "disinformation, fabricated claims, conspiracy theories, defamation", ()),
    Category("privacy", "personal or private information of others, doxxing, surveillance of a person", ()),
)
CATEGORY_KEYS = tuple(category.key for category in CATEGORIES)
BY_KEY = {category.key: category for category in CATEGORIES}
#: The OpenAI keys some category maps to, in OpenAI's order; the others are left unclassified.
JUDGED_OPENAI_KEYS = tuple(key for key in OPENAI_KEYS if any(key in category.openai for category in CATEGORIES))


def unknown_category_message(key: str) -> str:
    close = difflib.get_close_matches(key, CATEGORY_KEYS, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown harm category {key!r}.{hint} Categories: {', '.join(CATEGORY_KEYS)}."


def check_categories(keys: Iterable[str]) -> tuple[str, ...]:
    """``keys`` in taxonomy order, without repeats; an unknown key raises ValueError with a did-you-mean."""
    wanted = set()
    for key in keys:
        if key not in BY_KEY:
            raise ValueError(unknown_category_message(key))
        wanted.add(key)
    return tuple(key for key in CATEGORY_KEYS if key in wanted)


def openai_scores(scores: Mapping[str, float]) -> dict[str, float]:
    """OpenAI key -> the highest score among the categories mapping to it (judged keys only)."""
    rolled: dict[str, float] = {}
    for key, score in scores.items():
        for openai_key in BY_KEY[key].openai:
            rolled[openai_key] = max(rolled.get(openai_key, 0.0), score)
    return {key: rolled[key] for key in OPENAI_KEYS if key in rolled}


def openai_flags(scores: Mapping[str, float], thresholds: Mapping[str, float]) -> dict[str, bool]:
    """OpenAI key -> whether any category mapping to it reaches its own threshold (judged keys only)."""
    flags: dict[str, bool] = {}
    for key, score in scores.items():
        for openai_key in BY_KEY[key].openai:
            flags[openai_key] = flags.get(openai_key, False) or score >= thresholds[key]
    return {key: flags[key] for key in OPENAI_KEYS if key in flags}
