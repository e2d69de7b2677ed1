"""Tokenisation as llm-siren does it (special tokens, right-side truncation), plus our own padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class EncodedText:
    ids: list[int]
    #: The text had more tokens than the head's ``max_length`` and was cut, as the reference does.
    truncated: bool


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[EncodedText]:
    """Token ids of each (already cleaned) text, truncated to ``max_length`` by the tokenizer itself.

    Texts are tokenised untruncated first to learn which ones overflow; only those are tokenised
    again with truncation, so special tokens end up where the tokenizer puts them.
    """
    if not texts:
        return []
    full = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    encoded = [EncodedText(ids=list(ids), truncated=False) for ids in full]
    long_positions = [i for i, ids in enumerate(full) if len(ids) > max_length]
    if long_positions:
        cut = tokenizer(
            [texts[i] for i in long_positions], add_special_tokens=True, truncation=True, max_length=max_length
        )["input_ids"]
        for position, ids in zip(long_positions, cut):
            encoded[position] = EncodedText(ids=list(ids), truncated=True)
    return encoded


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask for one batch, padded on ``side`` to its longest sequence."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(width - len(ids), width) if side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, span] = 1
    return input_ids.to(device), attention_mask.to(device)


def plan_batches(lengths: Sequence[int], max_tokens: int, max_texts: int, max_padding: float = 1.0) -> list[list[int]]:
    """Group text positions into batches of similar length.

    Longest first, so a batch's padded size (texts x longest) stays under ``max_tokens``; a single
    text longer than that still gets a batch of its own. A batch also closes before its padding
    (padded minus real tokens, over padded) would pass ``max_padding``: padded tokens cost as much
    as real ones. Callers restore input order by position.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for position in order:
        longest = lengths[current[0]] if current else lengths[position]
        padded = (len(current) + 1) * longest
        if current and (
            len(current) + 1 > max_texts or padded > max_tokens or 1 - (real + lengths[position]) / padded > max_padding
        ):
            batches.append(current)
            current, real = [], 0
        current.append(position)
        real += lengths[position]
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class SpecialTokenLayout:
    """How many special tokens the tokenizer puts before and after a text's own tokens."""

    leading: int
    trailing: int

    @property
    def total(self) -> int:
        return self.leading + self.trailing

    @classmethod
    def of(cls, tokenizer) -> "SpecialTokenLayout":
        with_specials = tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        leading = _find_run(with_specials, plain)
        if leading is None:
            raise ValueError("the tokenizer's output with special tokens does not contain its output without them")
        return cls(leading, len(with_specials) - leading - len(plain))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts of windows of ``window`` tokens, ``stride`` apart, the last one ending at ``length``."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def encode_windows(tokenizer, texts: Sequence[str], max_length: int, stride: int) -> list[list[list[int]]]:
    """Per (cleaned) text, the token ids of each sliding window of at most ``max_length`` tokens.

    A text that fits is one window, exactly as ``encode_texts`` encodes it. A longer text's own
    tokens are cut into windows ``stride`` apart, and each window gets the tokenizer's special
    tokens, so the first window is exactly the reference's truncation.
    """
    layout = SpecialTokenLayout.of(tokenizer)
    window = max_length - layout.total
    windows = []
    for text, encoded in zip(texts, encode_texts(tokenizer, texts, max_length)):
        if not encoded.truncated:
            windows.append([encoded.ids])
            continue
        full = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
        content = full[layout.leading:len(full) - layout.trailing]
        head, tail = full[:layout.leading], full[len(full) - layout.trailing:]
        windows.append([head + content[start:start + window] + tail for start in window_starts(len(content), window, stride)])
    return windows


def _find_run(haystack: list[int], needle: list[int]) -> int | None:
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start:start + len(needle)] == needle:
            return start
    return None
