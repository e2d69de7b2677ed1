"""A member's backbone loaded with its LM head, to answer prompts (greedy) and to score answers (perplexity).

The prompts go through the tokenizer's chat template when it has one (the bundled instruct models do),
as a user turn with the generation prompt; otherwise the plain text is continued.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..backbones.base import BackboneAdapter
from ..weights import resolve_weights
from .hooks import decoder_layers

#: End-of-turn tokens of the chat templates we know, beside the tokenizer's own EOS.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>")


@dataclass(frozen=True)
class Generation:
    prompt_ids: list[int]
    response_ids: list[int]
    response: str


@dataclass
class InstructModel:
    model: nn.Module
    tokenizer: object
    name: str

    @classmethod
    def load(cls, adapter: BackboneAdapter) -> "InstructModel":
        weights = resolve_weights(adapter.spec.weights)
        return cls(adapter.load_language_model(weights), adapter.load_tokenizer(weights), adapter.spec.describe())

    @property
    def num_layers(self) -> int:
        return len(decoder_layers(self.model))

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def stop_ids(self) -> list[int]:
        vocabulary = self.tokenizer.get_vocab()
        ids = {vocabulary[token] for token in END_OF_TURN_TOKENS if token in vocabulary}
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return sorted(ids)

    def prompt_ids(self, prompt: str) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt)["input_ids"]

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8) -> list[Generation]:
        """Greedy answers, ``max_new_tokens`` at most each, stopping at an end-of-turn token (not kept)."""
        stops = set(self.stop_ids)
        pad = self.tokenizer.pad_token_id
        generations = []
        for start in range(0, len(prompts), batch_size):
            batch = [self.prompt_ids(prompt) for prompt in prompts[start:start + batch_size]]
            input_ids, attention_mask = _left_padded(batch, pad, self._device)
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                         do_sample=False, pad_token_id=pad, eos_token_id=sorted(stops))
            for ids, row in zip(batch, output[:, input_ids.shape[1]:].tolist()):
                response_ids = _until(row, stops)
                generations.append(Generation(ids, response_ids,
                                              self.tokenizer.decode(response_ids, skip_special_tokens=True).strip()))
        return generations

    @torch.inference_mode()
    def perplexities(self, generations: Sequence[Generation], batch_size: int = 8) -> list[float]:
        """Each response's perplexity given its prompt, under this model as it is now (NaN for an empty one)."""
        values = []
        for start in range(0, len(generations), batch_size):
            batch = generations[start:start + batch_size]
            sequences = [item.prompt_ids + item.response_ids for item in batch]
            input_ids, attention_mask = _left_padded(sequences, self.tokenizer.pad_token_id, self._device)
            # Positions count real tokens only, as generate() counted them under left padding.
            positions = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
            # Left padding ends every row at the last column, so the answers sit in the last `kept - 1` columns: logits of
            # those alone (a long prompt's logits over a 150k vocabulary would take gigabytes per batch).
            kept = min(max(len(item.response_ids) for item in batch) + 1, input_ids.shape[1])
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                                logits_to_keep=kept).logits.float()
            log_probabilities = torch.log_softmax(logits[:, :-1], dim=-1)
            token_log_probabilities = log_probabilities.gather(-1, input_ids[:, input_ids.shape[1] - kept + 1:, None])[..., 0]
            for row, item in enumerate(batch):
                count = len(item.response_ids)
                if not count:
                    values.append(float("nan"))
                    continue
                values.append(float(np.exp(-token_log_probabilities[row, -count:].mean().item())))
        return values

    @property
    def _device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device


def _left_padded(sequences: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    return input_ids.to(device), attention_mask.to(device)


def _until(ids: list[int], stops: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in stops:
            return ids[:position]
    return ids
