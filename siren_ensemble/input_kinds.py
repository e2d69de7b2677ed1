"""What ``Ensemble.score_batch`` scores, and the kind of each: a text (a prompt), a prompt and its response
(``PromptResponse``), or a conversation. The kind picks the route that decides it (``siren_ensemble.routing``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .config import InputKind
from .conversation import Conversation
from .errors import InputError
from .text import join_prompt_response


@dataclass(frozen=True)
class PromptResponse:
    """A prompt and the response that answers it, scored as one text (``join_prompt_response``) on the response
    route; either part may be missing. ``score(prompt=..., response=...)`` builds one."""

    prompt: str | None = None
    response: str | None = None

    def __post_init__(self):
        for name in ("prompt", "response"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InputError(f"{name}: expected a string, got {type(value).__name__}")
        if self.prompt is None and self.response is None:
            raise InputError("provide at least one of `prompt`/`response`")

    @property
    def text(self) -> str:
        return join_prompt_response(self.prompt, self.response)

    @property
    def characters(self) -> int:
        return len(self.text)

    @property
    def kind(self) -> InputKind:
        """A response when it has one (not empty); a prompt alone is a prompt."""
        return "response" if self.response else "prompt"


#: What ``Ensemble.score_batch`` scores.
Scorable = Union[str, PromptResponse, Conversation]


def kind_of(item: Scorable) -> InputKind:
    """The route an input takes: a pair with a response, and a conversation whose judged turns hold an answer, are
    responses; a text is a prompt."""
    if isinstance(item, PromptResponse):
        return item.kind
    if isinstance(item, Conversation):
        return "response" if len(item.judged) > 1 else "prompt"
    return "prompt"
