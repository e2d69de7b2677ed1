"""Templated refusals paired with harmful prompts: response-level records labelled benign.

The response is what a response-level head judges, so a harmful prompt answered with a refusal is
benign. Several styles (terse, apologetic, explaining, redirecting, quoting the request) keep the
head from learning one refusal phrase.
"""

from __future__ import annotations

import random
from typing import Iterable, Iterator

from .draws import draws
from .records import SafetyRecord

SOURCE = "templated_refusals"
REFUSAL_TEMPLATES = (
    "I'm sorry, but I can't help with that.",
    "No. I won't do that.",
    "I can't assist with this request because it could cause real harm to people.",
    "As an AI assistant, I must decline to provide this information, as it could facilitate illegal or dangerous activities.",
    "I understand you're asking about \"{excerpt}\", but I can't help with that. If you're interested in the topic for "
    "research or safety reasons, I'm happy to discuss its history, the laws around it, or how people protect themselves.",
    "I won't write that. It asks for content that could be used to hurt others, and that's something I don't produce.\n\n"
    "Is there something else I can help you with?",
    "I'm not able to help with this one. If you or someone else is in danger, please contact local emergency services "
    "or a crisis line; they can help right away.",
    "Sorry, that's not something I can provide. I can, however, explain why this is harmful and point you to "
    "legitimate resources on the subject.",
    "That request is against my guidelines, so I'll have to pass. Let me know if you'd like help with anything else!",
)
EXCERPT_WORDS = 8


def templated_refusals(harmful_prompts: Iterable[SafetyRecord], seed: int,
                       by_record: bool = False) -> Iterator[SafetyRecord]:
    """One refusal per harmful prompt-level record, the style drawn with ``seed`` (``by_record``: from that
    prompt alone, see draws.py); same group as the prompt."""
    drawn = draws(seed, SOURCE, by_record)
    for record in harmful_prompts:
        if record.level != "prompt" or record.label != 1:
            continue
        prompt = record.text or ""
        response = refusal_for(prompt, drawn.rng_for(prompt))
        yield SafetyRecord(label=0, source=SOURCE, level="response", prompt=prompt, response=response,
                           group=record.group)


def refusal_for(prompt: str, rng: random.Random) -> str:
    """One templated refusal of ``prompt``, its style drawn from ``rng`` (the templates quoting it get an excerpt)."""
    words = prompt.split()
    excerpt = " ".join(words[:EXCERPT_WORDS]).rstrip("?.!,;:") + ("..." if len(words) > EXCERPT_WORDS else "")
    return rng.choice(REFUSAL_TEMPLATES).format(excerpt=excerpt)
