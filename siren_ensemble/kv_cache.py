"""A KV cache for streams that writes each chunk's keys and values in place.

transformers' ``DynamicLayer`` appends by ``torch.cat``, so every chunk copies the whole cache: a
stream of n tokens in chunks of c copies about n^2 / 2c token states. Here each full-attention
layer keeps a buffer with room to spare, writes a chunk into it and hands attention a view of the
filled part; the buffer doubles when full (at most ``capacity``, a stream's token limit), so
growing to n tokens copies fewer than 2n. Sliding-window and linear-attention layers keep
transformers' own classes (they drop or fold tokens as they go).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

#: Tokens a buffer holds when it is first allocated (unless the stream's limit is smaller).
FIRST_CAPACITY = 64


def stream_cache(model_config, capacity: int):
    """A ``DynamicCache`` for ``model_config`` whose full-attention layers never exceed ``capacity`` tokens of buffer."""
    cache = DynamicCache(config=model_config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def croppable(cache) -> bool:
    """Whether every layer can drop its last tokens (sliding-window and linear-attention layers forget what a crop needs)."""
    return all(type(layer) in (DynamicLayer, PreallocatedLayer) for layer in cache.layers)


class PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer: keys and values are views of buffers written in place."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self._length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        self._reserve(end, key_states, value_states)
        self._key_buffer[..., self._length:end, :].copy_(key_states)
        self._value_buffer[..., self._length:end, :].copy_(value_states)
        self._set_length(end)
        return self.keys, self.values

    def _reserve(self, length: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        held = 0 if self._key_buffer is None else self._key_buffer.shape[-2]
        if length <= held:
            return
        # Doubling keeps the copies on growth linear in the stream's length; the limit caps the waste.
        room = max(length, min(max(2 * held, FIRST_CAPACITY), self.capacity))
        keys = key_states.new_empty((*key_states.shape[:-2], room, key_states.shape[-1]))
        values = value_states.new_empty((*value_states.shape[:-2], room, value_states.shape[-1]))
        if self._length:
            keys[..., :self._length, :].copy_(self._key_buffer[..., :self._length, :])
            values[..., :self._length, :].copy_(self._value_buffer[..., :self._length, :])
        self._key_buffer, self._value_buffer = keys, values

    def _set_length(self, length: int) -> None:
        self._length = length
        self.keys = self._key_buffer[..., :length, :]
        self.values = self._value_buffer[..., :length, :]

    def get_seq_length(self) -> int:
        return self._length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove and self._key_buffer is not None:
            self._set_length(max(self._length + tokens_to_remove, 0))

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        self._length = 0
        super().reset()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("a stream's cache holds one sequence")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a stream's cache holds one sequence")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("a stream's cache holds one sequence")
