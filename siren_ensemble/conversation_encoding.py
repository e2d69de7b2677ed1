"""A conversation as token ids for one backbone: its chat template when it has one, the turns that fit.

With ``template: auto`` a tokenizer that has a chat template renders the turns with it (the template
decides the special tokens, so the text is tokenised without adding more); otherwise, or when the
template refuses the turns (some allow no system turn, or need turns to alternate), the turns are
plain ``role: content`` lines tokenised like any text. Context turns are dropped oldest first until
the whole fits the head's ``max_length``; if the judged turns alone do not fit they are cut at the
end, as a long text is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from .conversation import Conversation, Message
from .encoding import encode_texts

Rendering = Literal["chat_template", "plain"]


@dataclass(frozen=True)
class EncodedConversation:
    ids: list[int]
    #: The judged turns themselves were cut to fit.
    truncated: bool
    #: Context turns read (the nearest ones); the others were dropped to fit max_length.
    context_turns: int
    rendering: Rendering


def plain_text(messages: Sequence[Message]) -> str:
    return "\n".join(f"{message.role}: {message.content}" for message in messages)


def render(tokenizer, messages: Sequence[Message], template: str) -> tuple[str, Rendering]:
    """The conversation as the text to tokenise, and how it was rendered."""
    if template == "auto" and getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template([message.to_dict() for message in messages], tokenize=False,
                                                 add_generation_prompt=False)
            return text, "chat_template"
        except Exception:  # a template that refuses these roles or their order: the plain form still reads them
            pass
    return plain_text(messages), "plain"


def encode_conversation(tokenizer, conversation: Conversation, max_length: int, template: str = "auto") -> EncodedConversation:
    context, judged = conversation.context, conversation.judged
    for kept in range(len(context), -1, -1):
        text, rendering = render(tokenizer, context[len(context) - kept:] + judged, template)
        ids = _ids(tokenizer, text, rendering)
        if len(ids) <= max_length:
            return EncodedConversation(ids, False, kept, rendering)
    if rendering == "plain":  # cut exactly as a long text is cut (special tokens where the tokenizer puts them)
        return EncodedConversation(encode_texts(tokenizer, [text], max_length)[0].ids, True, 0, rendering)
    return EncodedConversation(ids[:max_length], True, 0, rendering)


def _ids(tokenizer, text: str, rendering: Rendering) -> list[int]:
    # A chat template writes its own special tokens (BOS included, where the model has one).
    return list(tokenizer(text, add_special_tokens=rendering == "plain", verbose=False)["input_ids"])
