"""Streams: score a response while it is generated, each chunk paying only for its new tokens.

``Ensemble.stream(prompt)`` returns an :class:`EnsembleStream`; ``feed(chunk)`` appends the chunk
to the response and scores exactly what ``Ensemble.score(prompt=prompt, response=so_far)``
scores. For causal backbones each shared pass keeps the backbone's KV cache and running sums of
every pooled layer, so a chunk costs a forward pass over its own tokens only:

- the cleaned full text is re-tokenised on every feed (cheap), because tokens(prefix + chunk)
  is not always tokens(prefix) + tokens(chunk): BPE merges across the boundary, and cleaning
  strips trailing whitespace. The cache is rolled back to the longest common token prefix;
  the last ``ROLLBACK_POSITIONS`` positions' states are kept to undo their share of the sums,
  and a divergence further back starts the pass over.
- memory per stream is bounded: the KV cache holds at most the head's ``max_length`` tokens
  (as the reference, a stream scores the first ``max_length`` tokens), plus a few vectors per
  pooled layer. ``close()`` releases it.

With ``sliding_window`` configured, a text grown past a head's ``max_length`` is scored by
windows, each afresh (the first window is the stream's cached prefix, but the others are not).

Backbones whose states depend on later tokens (encoders such as BERT) cannot reuse earlier
work: their passes re-encode the whole text on every feed; ``EnsembleStream.incremental`` says
which members stream incrementally.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .errors import InputError
from .extraction import LoadedBackbone, PooledStates
from .text import join_prompt_response

if TYPE_CHECKING:
    from .ensemble import Ensemble, EnsembleResult, _SharedPass

#: How many trailing positions a feed can roll back without starting its pass over.
ROLLBACK_POSITIONS = 32


class StreamClosedError(InputError):
    """A closed stream was fed."""


class EnsembleStream:
    """One response being scored chunk by chunk; a context manager that closes itself."""

    def __init__(self, ensemble: "Ensemble", prompt: str | None, threshold: float):
        self._ensemble = ensemble
        self._prompt = prompt
        self._threshold = threshold
        self._response = ""
        self._passes: list[PassStream] | None = [PassStream(shared) for shared in ensemble._passes]
        names = ensemble.member_names
        self._incremental = {
            names[position]: stream.incremental for stream in self._passes for position in stream.shared.member_positions
        }

    @property
    def closed(self) -> bool:
        return self._passes is None

    @property
    def text(self) -> str:
        """The text scored by the last feed: prompt and response so far, joined as ``score`` joins them."""
        return join_prompt_response(self._prompt, self._response)

    @property
    def incremental(self) -> dict[str, bool]:
        """Per member: whether its backbone reuses earlier chunks' work (False: re-encodes every feed)."""
        return dict(self._incremental)

    def feed(self, chunk: str) -> "EnsembleResult":
        """Append ``chunk`` to the response and score the prompt and the response so far."""
        if self._passes is None:
            raise StreamClosedError("this stream is closed; open a new one with Ensemble.stream()")
        if not isinstance(chunk, str):
            raise InputError(f"chunk: expected a string, got {type(chunk).__name__}")
        self._response += chunk
        return self._ensemble._score_stream(self.text, self._passes, self._threshold)

    def close(self) -> None:
        """Release the stream's caches; feeding afterwards raises StreamClosedError."""
        if self._passes is not None:
            for stream in self._passes:
                stream.reset()
        self._passes = None

    def __enter__(self) -> "EnsembleStream":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


class PassStream:
    """One shared pass's state within a stream."""

    def __init__(self, shared: "_SharedPass"):
        self.shared = shared
        self.incremental = shared.backbone.streams_incrementally
        self._pooler: IncrementalPooler | None = None

    def pooled(self, ids: list[int]) -> PooledStates:
        """Pooled states (one row) of ``ids``: the stream's whole text, as this pass encodes it."""
        backbone = self.shared.backbone
        if not self.incremental:
            return backbone.pooled_states([ids], self.shared.wanted)
        if self._pooler is None:
            self._pooler = IncrementalPooler(backbone, self.shared.wanted)
        return self._pooler.advance(ids)

    def reset(self) -> None:
        self._pooler = None


class IncrementalPooler:
    """A causal backbone's KV cache and running per-layer sums for one growing token sequence."""

    def __init__(self, backbone: LoadedBackbone, wanted, keep: int | None = None):
        self.backbone = backbone
        self.wanted = frozenset(wanted)
        self.keep = ROLLBACK_POSITIONS if keep is None else keep
        self.tokens_run = 0  # tokens fed through the backbone, for tests and benchmarks
        self._start_over()

    def _start_over(self) -> None:
        self.ids: list[int] = []
        self._cache = None
        # float64 sums: rolling back subtracts, and the mean must not drift over a long stream.
        self._sums: dict[tuple[str, int], torch.Tensor] = {}
        self._recent: dict[tuple[str, int], torch.Tensor] = {}

    @torch.inference_mode()
    def advance(self, ids: list[int]) -> PooledStates:
        """Mean-pooled states of ``ids`` (float32, one row), running only the tokens not yet cached."""
        if not ids:
            raise ValueError("cannot pool an empty token sequence")
        common = _common_prefix_length(self.ids, ids)
        rollback = len(self.ids) - common
        recent = min((len(kept) for kept in self._recent.values()), default=0)
        if common == 0 or rollback > recent or (rollback and not self._can_crop()):
            self._start_over()
        elif rollback:
            self._roll_back(common)
        if len(ids) > len(self.ids):
            self._extend(ids[len(self.ids):])
        count = len(self.ids)
        return {key: (total / count).to(torch.float32).unsqueeze(0) for key, total in self._sums.items()}

    def _can_crop(self) -> bool:
        # Sliding-window and linear-attention layers forget what a crop would need back.
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in self._cache.layers)

    def _roll_back(self, length: int) -> None:
        drop = len(self.ids) - length
        self._cache.crop(-drop)
        for key in self._sums:
            self._sums[key] -= self._recent[key][-drop:].sum(dim=0, dtype=self._sums[key].dtype)
            self._recent[key] = self._recent[key][:-drop]
        self.ids = self.ids[:length]

    def _extend(self, new_ids: list[int]) -> None:
        from transformers import DynamicCache

        backbone = self.backbone
        if self._cache is None:
            self._cache = DynamicCache(config=backbone.model.config)
        device = backbone.input_device
        total = len(self.ids) + len(new_ids)
        gathered: dict[tuple[str, int], torch.Tensor] = {}

        def gather(key, states):
            gathered[key] = states[0].to(torch.float32)

        try:
            backbone.run_hooked(
                self.wanted, gather,
                input_ids=torch.tensor([new_ids], dtype=torch.long, device=device),
                attention_mask=torch.ones((1, total), dtype=torch.long, device=device),
                past_key_values=self._cache, use_cache=True,
            )
        except BaseException:
            self._start_over()  # a half-updated cache must not be reused
            raise
        self.tokens_run += len(new_ids)
        for key, states in gathered.items():
            added = states.sum(dim=0, dtype=_sum_dtype(states.device))
            self._sums[key] = self._sums[key] + added if key in self._sums else added
            kept = self._recent.get(key)
            self._recent[key] = (states if kept is None else torch.cat([kept, states]))[-self.keep:]
        self.ids = self.ids + list(new_ids)


def _sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _common_prefix_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length
