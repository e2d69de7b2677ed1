"""Text preparation exactly as the ``llm-siren`` runtime does it, so heads see what they were trained on."""

from __future__ import annotations

import re

# Chat-template markers are replaced by a space before tokenisation (llm-siren 0.2.0 behaviour).
_CHAT_ARTIFACTS = re.compile(
    r"<\|im_start\|>|<\|im_end\|>|<\|im_sep\|>"
    r"|<\|system\|>|<\|user\|>|<\|assistant\|>"
    r"|<\|begin_of_text\|>|<\|end_of_text\|>"
    r"|<\|start_header_id\|>|<\|end_header_id\|>|<\|eot_id\|>"
    r"|<\|endoftext\|>|<\|fim_prefix\|>|<\|fim_suffix\|>|<\|fim_middle\|>"
    r"|<<SYS>>|<</SYS>>|\[INST\]|\[/INST\]"
    r"|<s>|</s>|<\|s\|>|<\|/s\|>"
)
_HORIZONTAL_WHITESPACE = re.compile(r"[ \t]+")
_THREE_OR_MORE_NEWLINES = re.compile(r"\n{3,}")

#: What an empty text becomes: the reference scores a single space rather than nothing.
EMPTY_TEXT_STANDIN = " "


def clean_text(text: str) -> str:
    """Strip chat markers and squeeze whitespace; an empty result becomes a single space."""
    if not text:
        return EMPTY_TEXT_STANDIN
    cleaned = _CHAT_ARTIFACTS.sub(" ", text)
    cleaned = _HORIZONTAL_WHITESPACE.sub(" ", cleaned)
    cleaned = _THREE_OR_MORE_NEWLINES.sub("\n\n", cleaned)
    return cleaned.strip() or EMPTY_TEXT_STANDIN


def join_prompt_response(prompt: str | None, response: str | None) -> str:
    """Prompt and response joined by one newline; missing or empty parts are left out."""
    return "\n".join(part for part in (prompt, response) if part)


def check_encodable(text: str) -> None:
    """Raise ``ValueError`` when ``text`` holds a lone surrogate (JSON's ``"\\ud800"``): UTF-8 has no form for it,
    so no tokenizer can read it. The message says where, without echoing the text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"not valid Unicode: lone surrogate U+{ord(text[error.start]):04X} at character {error.start}") from None
