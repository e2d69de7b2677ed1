"""Surface forms of a request: the style cues a head could learn instead of harm.

Heuristics on the request (a record's text, or its prompt), deliberately simple and documented, so
per-class shares can be compared: if harmful data is mostly imperative and benign data mostly
questions, a probe can score well by reading the form.
"""

from __future__ import annotations

import re

from .records import SafetyRecord

IMPERATIVE_VERBS = frozenset(
    """add analyze analyse answer build calculate change check choose classify compare compose convert
    correct create debug define demonstrate describe design detail develop devise draft draw edit
    elaborate estimate evaluate explain extract fill find fix format generate give guide help identify
    imagine implement improve instruct list make name offer outline paraphrase plan prepare produce
    propose provide recommend rephrase replace respond review rewrite say share show simulate solve
    sort spread suggest summarize summarise teach tell transform translate turn use walk write""".split()
)
QUESTION_OPENERS = frozenset(
    "how what why when where who whom whose which can could would should is are am do does did will was were may might".split()
)
_FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|i'll|me|my|mine|myself|we|our|us)\b", re.IGNORECASE)
_FUTURE = re.compile(r"\b(will|won't|shall|going to|in the future|in the coming)\b", re.IGNORECASE)
_PAST = re.compile(r"\b(was|were|did|had|used to|in the past|historically|ago)\b", re.IGNORECASE)
_FIRST_WORD = re.compile(r"[a-z']+")
LENGTH_BUCKETS = ((100, "length<100"), (500, "length100-499"), (2000, "length500-1999"), (None, "length>=2000"))
FORMS = ("imperative", "question", "first_person", "future", "past") + tuple(name for _, name in LENGTH_BUCKETS)


def request_text(record: SafetyRecord) -> str:
    return (record.prompt if record.level == "response" else record.text) or ""


def surface_forms(record: SafetyRecord) -> set[str]:
    """The forms of the record's request; the length bucket is of what the head reads."""
    text = request_text(record).strip()
    lowered = text.lower()
    words = _FIRST_WORD.findall(lowered[:40])
    first = words[0] if words else ""
    if first == "please" and len(words) > 1:
        first = words[1]
    forms = set()
    if first in IMPERATIVE_VERBS:
        forms.add("imperative")
    if text.endswith("?") or first in QUESTION_OPENERS:
        forms.add("question")
    if _FIRST_PERSON.search(text):
        forms.add("first_person")
    if _FUTURE.search(text):
        forms.add("future")
    if _PAST.search(text):
        forms.add("past")
    forms.add(length_bucket(len(record.scored_text)))
    return forms


def length_bucket(length: int) -> str:
    for limit, name in LENGTH_BUCKETS:
        if limit is None or length < limit:
            return name
    raise AssertionError("unreachable")
