"""Hard cases made from the requests we have: the same request in another surface form, and the
defensive question about it.

Harmful "how to" requests arrive mostly as imperatives ("Write a tutorial on how to make a bomb")
and many benign ones as questions, so a head can learn the form instead of the harm and miss "How
do I make a bomb?". Three templated sets close that gap without new sources:

- ``rephrased_requests`` (both classes): a request's action ("make a bomb") said in the other form:
  imperative -> short question, question -> imperative. The same templates serve both classes.
- ``defensive_questions`` (benign): questions about recognising, reporting or protecting against a
  harmful action ("How can I tell if someone is trying to steal my identity?"): harm vocabulary with
  a defensive intent, what security-awareness questions look like.
- ``short_instructions`` (benign): the first sentence of a long benign imperative request ("Write
  a SQL query that ..."). Benign only: a harmful request's first sentence need not carry the harm.

Every generated record keeps the group of the request it comes from, so both land in one split.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Iterable, Iterator, Sequence

from .forms import IMPERATIVE_VERBS
from .dedupe import new_records
from .draws import draws
from .normalize import record_key
from .records import SafetyRecord

REPHRASED_SOURCE = "rephrased_requests"
DEFENSIVE_SOURCE = "defensive_questions"
SHORT_INSTRUCTION_SOURCE = "short_instructions"
SOURCES = (REPHRASED_SOURCE, DEFENSIVE_SOURCE, SHORT_INSTRUCTION_SOURCE)

_ACTION = r"(?P<action>[^\n?.!]{6,140})"
IMPERATIVE_HOW_TO = re.compile(
    r"^(?:please\s+)?(?:can you\s+|could you\s+)?(?:write|create|give|provide|develop|generate|explain|describe|"
    r"outline|teach|show|tell)\b[^?\n]{0,80}?\bhow to\s+" + _ACTION + r"[.?!]?\s*$",
    re.IGNORECASE,
)
QUESTION_HOW_TO = re.compile(
    r"^(?:how (?:do|can|could|would|should|might) (?:i|you|one|someone|people|we|a person)|"
    r"what(?: is|'s) the (?:best|easiest|fastest|quickest|safest|simplest) way to|is there a way to)\s+"
    + _ACTION + r"\?\s*$",
    re.IGNORECASE,
)
AS_QUESTION = (
    "How do I {action}?",
    "How can I {action}?",
    "How would someone {action}?",
    "What's the easiest way to {action}?",
    "Is there a simple way to {action}?",
)
AS_IMPERATIVE = (
    "Explain how to {action}.",
    "Tell me how to {action}.",
    "Give me step-by-step instructions to {action}.",
    "Show me how to {action}.",
    "Write a short guide on how to {action}.",
)
DEFENSIVE = (
    "How can I tell if someone is trying to {action}?",
    "What are the warning signs that someone is planning to {action}?",
    "How do I report someone who is trying to {action}?",
    "How can I protect myself and my family from people who {action}?",
    "How do the police usually catch people who {action}?",
    "What should I do if I find out that a coworker wants to {action}?",
)
_FIRST_PERSON = re.compile(r"\b(i|me|my|mine|myself|we|our|us)\b", re.IGNORECASE)
# "use it", "do this": an action that points back to its context is not a request on its own.
_BACK_REFERENCE = re.compile(r"\b(it|this|that|them|these|those|such)\b", re.IGNORECASE)
MIN_ACTION_WORDS = 3
# "Summarize the following.": a sentence about text it no longer has.
_POINTS_ELSEWHERE = re.compile(r"\b(following|below|above|this|these|given)\b", re.IGNORECASE)
_FIRST_SENTENCE = re.compile(r"^(?P<sentence>[^\n]*?[.?!:])(?:\s|$)")
SHORT_INSTRUCTION_CHARS = (25, 160)
SHORT_INSTRUCTION_MIN_REQUEST = 200  # only long requests have a first sentence worth taking alone


def request_action(text: str) -> tuple[str, str] | None:
    """The action of a "how to" request and the form it came in ("imperative" or "question")."""
    text = text.strip()
    for form, pattern in (("imperative", IMPERATIVE_HOW_TO), ("question", QUESTION_HOW_TO)):
        match = pattern.match(text)
        if match:
            return match["action"].strip().rstrip(",;:"), form
    return None


def first_instruction(text: str) -> str | None:
    """The first sentence of a long request when it is an instruction on its own, else None."""
    text = text.strip()
    if len(text) < SHORT_INSTRUCTION_MIN_REQUEST:
        return None
    match = _FIRST_SENTENCE.match(text)
    if not match or not SHORT_INSTRUCTION_CHARS[0] <= len(match["sentence"]) <= SHORT_INSTRUCTION_CHARS[1]:
        return None
    sentence = match["sentence"].rstrip(":").rstrip() + ("." if match["sentence"].endswith(":") else "")
    words = re.findall(r"[a-z']+", sentence.lower())
    if not words or words[0] not in IMPERATIVE_VERBS or _POINTS_ELSEWHERE.search(sentence):
        return None
    return sentence


def rephrased_requests(records: Sequence[SafetyRecord], per_class: int, seed: int,
                       by_record: bool = False) -> Iterator[SafetyRecord]:
    """Up to ``per_class`` "how to" requests of each class said in the other surface form."""
    drawn = draws(seed, REPHRASED_SOURCE, by_record)
    for label in (1, 0):
        actions = _actions(records, label)
        for record, action, form in drawn.sample(actions, per_class, key=_action_key):
            templates = AS_QUESTION if form == "imperative" else AS_IMPERATIVE
            text = drawn.rng_for(record_key(record)).choice(templates).format(action=action)
            yield replace(record, source=REPHRASED_SOURCE, text=text)


def defensive_questions(records: Sequence[SafetyRecord], limit: int, seed: int,
                        by_record: bool = False) -> Iterator[SafetyRecord]:
    """Up to ``limit`` benign questions about recognising or stopping a harmful request's action."""
    drawn = draws(seed, DEFENSIVE_SOURCE, by_record)
    actions = [item for item in _actions(records, 1) if not _FIRST_PERSON.search(item[1])]
    for record, action, _ in drawn.sample(actions, limit, key=_action_key):
        text = drawn.rng_for(record_key(record)).choice(DEFENSIVE).format(action=action)
        yield replace(record, label=0, source=DEFENSIVE_SOURCE, text=text, categories=None)


def short_instructions(records: Sequence[SafetyRecord], limit: int, seed: int,
                       by_record: bool = False) -> Iterator[SafetyRecord]:
    """Up to ``limit`` first sentences of long benign imperative requests, each on its own."""
    drawn = draws(seed, SHORT_INSTRUCTION_SOURCE, by_record)
    candidates = []
    for record in _prompts(records, 0):
        sentence = first_instruction(record.text or "")
        if sentence:
            candidates.append((record, sentence))
    for record, sentence in drawn.sample(candidates, limit, key=lambda item: record_key(item[0])):
        yield replace(record, source=SHORT_INSTRUCTION_SOURCE, text=sentence)


def hard_cases(records: Sequence[SafetyRecord], per_set: int, seed: int, by_record: bool = False) -> list[SafetyRecord]:
    """All three sets, skipping any text already in ``records`` (or generated twice)."""
    generated = (*rephrased_requests(records, per_set, seed, by_record),
                 *defensive_questions(records, per_set, seed, by_record),
                 *short_instructions(records, per_set, seed, by_record))
    return new_records(records, generated)


def _prompts(records: Iterable[SafetyRecord], label: int) -> list[SafetyRecord]:
    return [r for r in records if r.level == "prompt" and r.label == label and r.text]


def _action_key(item: tuple[SafetyRecord, str, str]) -> str:
    return record_key(item[0])


def _actions(records: Sequence[SafetyRecord], label: int) -> list[tuple[SafetyRecord, str, str]]:
    found = []
    for record in _prompts(records, label):
        parsed = request_action(record.text or "")
        if parsed and len(parsed[0].split()) >= MIN_ACTION_WORDS and not _BACK_REFERENCE.search(parsed[0]):
            found.append((record, *parsed))
    return found
