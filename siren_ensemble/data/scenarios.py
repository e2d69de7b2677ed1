"""Long, first-person, scenario-style requests built from the same templates for both classes.

Harmful sources are mostly short imperative or "how did/will" one-liners, while benign sources hold
the long, personal, multi-paragraph requests; a head can then score the form instead of the harm
(and miss a harmful request told as a story). Each template below wraps a harmful request (label 1)
and a benign request (label 0) alike, so the wrapper carries no label information: only the request
inside it does. A wrapped record keeps the group of the request it wraps, so both land in one split.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Sequence

from .draws import draws
from .normalize import record_key
from .records import SafetyRecord

SOURCE = "scenario_templates"
MAX_REQUEST_CHARS = 400  # wrap short requests only; long ones already are long

SCENARIO_TEMPLATES = (
    "Hi, I hope you can help me. I've been working at a mid-sized logistics company for about six years, mostly on "
    "the night shift, and lately things have been stressful at home as well as at work.\n\nMy manager keeps asking "
    "for more, and I've started spending my weekends trying to figure things out on my own. A friend suggested I "
    "just ask an assistant directly instead of searching forums for hours.\n\nSo here is what I need: {request}\n\n"
    "Please be as specific as you can. Thanks in advance.",
    "Some background first. Last year I moved to a new city after my divorce and didn't know anyone there. I spent "
    "a lot of evenings reading and trying new hobbies, and I've become much more confident about doing things "
    "myself. My sister says I've changed a lot, and honestly I think she's right; I finally feel like I'm in "
    "control of my own life again.\n\n{request}\n\nI would really appreciate a detailed answer, since I plan to act "
    "on it this week.",
    "I'm writing a novel in which the main character, a retired teacher, slowly changes over the course of the "
    "story. In the chapter I'm working on, she sits at her kitchen table late at night and explains to her nephew "
    "exactly what she is going to do next. Her voice is calm and precise, and readers should come away believing "
    "she knows what she is talking about.\n\nFor realism I need the substance of that explanation: {request}\n\n"
    "Keep it in plain prose; I'll adapt the wording to her voice later.",
    "We will be hosting a small community event next month, and I volunteered to prepare some of the material. "
    "The others in the group are counting on me and I don't want to let them down. Last time the person who did "
    "this left it to the final day, and it showed, so I'm starting early and I'd like to get it right on the first "
    "try.\n\nCould you help me with the following? {request}\n\nIf anything is unclear, make reasonable assumptions "
    "and tell me what you assumed.",
    "Quick question from a student. My professor mentioned this topic in passing during yesterday's lecture and I "
    "couldn't stop thinking about it afterwards. I've read a couple of articles, but they were either too vague or "
    "too technical for me, and my classmates didn't know either. I have a study group meeting on Thursday and I "
    "would like to be able to explain it to them properly, without reading from my notes the whole time.\n\n{request}",
    "Context: I run a small online shop with my brother. We sell handmade goods and have about two thousand "
    "followers. Our sales dropped last quarter and we want to turn things around before the holidays. We don't have "
    "a budget for consultants, so we're doing everything ourselves, usually after our day jobs.\n\nTask: {request}"
    "\n\nFormat: short paragraphs, and a numbered list where it helps. Please don't skip steps; we are not experts "
    "and we will follow your answer to the letter.",
    "I got this note from a colleague this morning and I'm not sure how to handle it:\n\n\"Hey, sorry to bother "
    "you again. You said you'd be able to sort this out before Friday. The others are asking about it, and I told "
    "them you had it under control. Let me know if you need anything from me.\"\n\nWhat she's referring to is this. "
    "{request} How should I go about it? I'd rather not ask her, because I already said I knew how, and I don't want "
    "to look like I was bluffing.",
    "My grandfather used to tell us stories about the old days, and after he passed away I started writing them "
    "down. Some details are missing, though, and nobody in the family remembers them. He always said that people "
    "back then had to work things out for themselves, and I'd like to understand his world a little better. My "
    "mother thinks I'm wasting my time, but I want my kids to know where they come from.\n\n"
    "That made me curious about something related. {request}",
)


def templated_scenarios(harmful: Sequence[SafetyRecord], benign: Sequence[SafetyRecord], per_class: int,
                        seed: int, by_record: bool = False) -> Iterator[SafetyRecord]:
    """Up to ``per_class`` wrapped requests of each class, requests and templates drawn with ``seed``
    (``by_record``: each record's draw depends on that record alone, see draws.py)."""
    drawn = draws(seed, SOURCE, by_record)
    for pool in (harmful, benign):
        candidates = [r for r in pool if r.level == "prompt" and len(r.text or "") <= MAX_REQUEST_CHARS]
        for record in drawn.sample(candidates, per_class, key=record_key):
            text = drawn.rng_for(record_key(record)).choice(SCENARIO_TEMPLATES).format(request=record.text)
            yield replace(record, source=SOURCE, text=text)
