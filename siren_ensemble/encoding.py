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


def plan_batches(lengths: Sequence[int], max_tokens: int, max_texts: int) -> list[list[int]]:
    """Group text positions into batches of similar length.

    Longest first, so a batch's padded size (texts x longest) stays under ``max_tokens``; a single
    text longer than that still gets a batch of its own. Callers restore input order by position.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for position in order:
        longest = lengths[current[0]] if current else lengths[position]
        if current and (len(current) + 1 > max_texts or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        current.append(position)
    if current:
        batches.append(current)
    return batches
