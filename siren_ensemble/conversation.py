"""Chat messages to judge: parsed with clear errors, and cut to a window of previous turns.

A conversation is judged on its last user turn and whatever answers it (the last assistant turn),
read in the context of the turns before, alone, or both ways (``judge``, as ``conversation.judge``).
``windowed`` keeps at most ``window`` of those earlier turns; how each backbone renders and fits
the rest is ``conversation_encoding``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from .errors import InputError

Role = Literal["system", "user", "assistant"]
ROLES = ("system", "user", "assistant")
#: How a conversation is judged: "either" scores it in context and its last turns alone and keeps the higher
#: score (flagged when either view is); "context": in context only; "last_turns": the last user turn and its
#: answer alone, as ``score`` reads a prompt/response pair.
Judge = Literal["either", "context", "last_turns"]
JUDGES: tuple[str, ...] = get_args(Judge)
#: Messages one conversation may hold (before the window), so one request cannot ask for unbounded work.
MAX_MESSAGES = 512


def check_judge(judge: str, where: str = "judge") -> None:
    if judge not in JUDGES:
        raise InputError(f"{where}: expected one of {', '.join(JUDGES)}, got {judge!r}")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    #: Earlier turns the window left out (they are not in ``messages``).
    dropped_by_window: int = 0
    #: How to judge it: "either" (in context and its last turns alone, the higher score), "context" or
    #: "last_turns"; None: the ensemble config's ``conversation.judge``.
    judge: Judge | None = None

    @property
    def judged_start(self) -> int:
        """Index of the last user turn: it and the turns after it (its answer) are judged."""
        return max(index for index, message in enumerate(self.messages) if message.role == "user")

    @property
    def context(self) -> tuple[Message, ...]:
        return self.messages[:self.judged_start]

    @property
    def judged(self) -> tuple[Message, ...]:
        return self.messages[self.judged_start:]

    @property
    def turns(self) -> int:
        """Every turn the caller sent, the ones the window dropped included."""
        return len(self.messages) + self.dropped_by_window

    @property
    def characters(self) -> int:
        return sum(len(message.content) for message in self.messages)

    def windowed(self, window: int) -> "Conversation":
        """At most ``window`` turns of context before the judged ones (the nearest), the rest counted as dropped."""
        if window < 0:
            raise InputError(f"window: expected 0 or more previous turns, got {window}")
        kept = self.context[max(0, len(self.context) - window):]
        dropped = self.dropped_by_window + len(self.context) - len(kept)
        return replace(self, messages=kept + self.judged, dropped_by_window=dropped)

    def judged_as(self, judge: str) -> "Conversation":
        """The same conversation, to be judged ``judge`` ("either", "context" or "last_turns")."""
        check_judge(judge)
        return replace(self, judge=judge)

    def with_contents(self, contents: list[str]) -> "Conversation":
        return replace(self, messages=tuple(Message(m.role, text) for m, text in zip(self.messages, contents)))

    def last_turns_text(self) -> str:
        """The judged turns as one text, the way a prompt and its response are joined (scoring them alone)."""
        from .text import join_prompt_response

        user = self.judged[0].content
        answers = [message.content for message in self.judged[1:]]
        return join_prompt_response(user, answers[-1] if answers else None)

    @classmethod
    def parse(cls, raw: Any, where: str = "messages") -> "Conversation":
        """``[{"role": ..., "content": ...}, ...]`` (OpenAI chat messages; content may be a list of text parts)."""
        if not isinstance(raw, list):
            raise InputError(f"{where}: expected a list of {{\"role\", \"content\"}} objects, got {type(raw).__name__}")
        if not raw:
            raise InputError(f"{where}: empty; give at least one user turn")
        if len(raw) > MAX_MESSAGES:
            raise InputError(f"{where}: {len(raw)} messages, over the limit of {MAX_MESSAGES}")
        messages = tuple(_message(item, f"{where}[{index}]") for index, item in enumerate(raw))
        if not any(message.role == "user" for message in messages):
            raise InputError(f"{where}: no user turn; the last user turn (and its answer) is what is judged")
        if messages[-1].role == "system":
            raise InputError(f"{where}: ends with a system message; the last turn to judge (user or assistant) is missing")
        return cls(messages)


def _message(item: Any, where: str) -> Message:
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected an object with `role` and `content`, got {type(item).__name__}")
    unknown = sorted(set(item) - {"role", "content", "name"})
    if unknown:
        raise InputError(f"{where}: unknown field {unknown[0]!r} (a message has `role`, `content` and optionally `name`)")
    role = item.get("role")
    if role not in ROLES:
        raise InputError(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}")
    if "content" not in item:
        raise InputError(f"{where}.content: missing")
    content = _text_of(item["content"], f"{where}.content")
    if not content.strip():
        raise InputError(f"{where}.content: empty")
    return Message(role, content)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text can be judged
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InputError(f"{where}[{index}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) can be judged")
            texts.append(part["text"])
        return "\n".join(texts)
    raise InputError(f"{where}: expected a string (or a list of text parts), got {type(content).__name__}")


@dataclass(frozen=True)
class ConversationReport:
    """What a result says about the conversation it judged."""

    turns: int
    #: The last user turn and what answers it.
    judged_turns: int
    #: Context turns every member read (the nearest ones).
    context_turns: int
    #: Earlier turns some member did not read: left out by the window, or dropped to fit a head's max_length.
    dropped_turns: int
    #: Per member: "chat_template" (its tokenizer's) or "plain" ("role: content" lines); empty when the
    #: conversation was not read in context (``judge`` "last_turns").
    rendering: dict[str, str]
    #: How it was judged: "either", "context" or "last_turns" (the request's, else ``conversation.judge``).
    judge: str = "context"
    #: The view whose score is the result's ("context" or "last_turns"); the members' scores, categories,
    #: ``truncated`` and ``decided_by`` are that view's.
    judged_by: str = "context"
    #: The score in context, and the score of the last user turn and its answer alone (as ``score`` reads a
    #: prompt/response pair); None for a view that was not scored.
    context_score: float | None = None
    last_turns_score: float | None = None
