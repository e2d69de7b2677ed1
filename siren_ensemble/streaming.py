"""Streams: score a response while it is generated, each chunk paying only for its new tokens.

``Ensemble.stream(prompt)`` returns an :class:`EnsembleStream`; ``feed(chunk)`` appends the chunk
to the response and scores exactly what ``Ensemble.score(prompt=prompt, response=so_far)``
scores. For causal backbones each shared pass keeps the backbone's KV cache and running sums of
every pooled layer, so a chunk costs a forward pass over its own tokens only:

- the KV cache writes each chunk into buffers allocated ahead (``kv_cache``), never copying
  itself to grow by a chunk.
- ``feed_many(chunks)`` (chunks that arrived together, e.g. while the last one was scored)
  answers one result per chunk, as if each had been fed alone, from as few forward steps as
  tokenisation allows: one, when each text's tokens begin the next one's (a chunk ending
  inside a word breaks the run there). A step over many tokens keeps the matmuls wide, where
  several small ones would each pay their fixed cost.
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

from typing import TYPE_CHECKING, Sequence

import torch

from .errors import InputError
from .extraction import LoadedBackbone, PooledStates, StreamSupport
from .text import join_prompt_response

if TYPE_CHECKING:
    from .ensemble import Ensemble, EnsembleResult, _SharedPass

#: How many trailing positions a feed can roll back without starting its pass over.
ROLLBACK_POSITIONS = 32
#: KV buffer limit of a pooler built without one (a stream's passes give their head's max_length).
DEFAULT_CAPACITY = 4096


class StreamClosedError(InputError):
    """A closed stream was fed."""


class ReEncodingStreamWarning(UserWarning):
    """A member's streams re-encode the whole text on every chunk (each chunk then costs a full pass)."""


class EnsembleStream:
    """One response being scored chunk by chunk; a context manager that closes itself."""

    def __init__(self, ensemble: "Ensemble", prompt: str | None, threshold: float):
        self._ensemble = ensemble
        self._prompt = prompt
        self._threshold = threshold
        self._response = ""
        self._passes: list[PassStream] | None = [PassStream(shared) for shared in ensemble._passes]
        names = ensemble.member_names
        self._support = {
            names[position]: stream.support for stream in self._passes for position in stream.shared.member_positions
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
        return {name: support.incremental for name, support in self._support.items()}

    @property
    def support(self) -> dict[str, StreamSupport]:
        """Per member: how its backbone streams, and why it re-encodes where it does."""
        return dict(self._support)

    def feed(self, chunk: str) -> "EnsembleResult":
        """Append ``chunk`` to the response and score the prompt and the response so far."""
        if not isinstance(chunk, str):
            raise InputError(f"chunk: expected a string, got {type(chunk).__name__}")
        return self.feed_many([chunk])[0]

    def feed_many(self, chunks: Sequence[str]) -> list["EnsembleResult"]:
        """Append each chunk in turn; one result per chunk, equal to feeding them one by one, from fewer forward steps."""
        if self._passes is None:
            raise StreamClosedError("this stream is closed; open a new one with Ensemble.stream()")
        if isinstance(chunks, str) or not isinstance(chunks, Sequence):
            raise InputError(f"chunks: expected a list of strings, got {type(chunks).__name__}")
        for index, chunk in enumerate(chunks):
            if not isinstance(chunk, str):
                raise InputError(f"chunks[{index}]: expected a string, got {type(chunk).__name__}")
        texts = []
        for chunk in chunks:
            self._response += chunk
            texts.append(self.text)
        return self._ensemble._score_stream(texts, self._passes, self._threshold) if texts else []

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
        self.support = shared.backbone.stream_support
        self.incremental = self.support.incremental
        self._pooler: IncrementalPooler | None = None

    def pooled(self, sequences: list[list[int]]) -> PooledStates:
        """Pooled states, one row per sequence: the stream's whole text after each chunk, as this pass encodes it.

        Incremental passes only; the others are scored as ``score_batch`` scores texts.
        """
        if not self.incremental:
            raise ValueError(f"{self.shared.backbone.spec.describe()} does not stream incrementally; re-encode instead")
        if self._pooler is None:
            self._pooler = IncrementalPooler(self.shared.backbone, self.shared.wanted, capacity=self.shared.max_length)
        rows = self._pooler.advance_many(sequences)
        return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}

    def reset(self) -> None:
        self._pooler = None


class IncrementalPooler:
    """A causal backbone's KV cache and running per-layer sums for one growing token sequence."""

    def __init__(self, backbone: LoadedBackbone, wanted, keep: int | None = None, capacity: int = DEFAULT_CAPACITY):
        support = backbone.stream_support
        if not support.incremental:
            raise ValueError(f"{backbone.spec.describe()} does not stream incrementally: {support.reason}")
        self.backbone = backbone
        self._cache_keyword = support.cache_keyword
        self.wanted = frozenset(wanted)
        self.keep = ROLLBACK_POSITIONS if keep is None else keep
        #: The most tokens the stream will hold (the head's max_length): the KV buffers never grow past it.
        self.capacity = capacity
        self.tokens_run = 0  # tokens fed through the backbone, for tests and benchmarks
        self.steps_run = 0  # forward steps, for tests and benchmarks
        self._start_over()

    def _start_over(self) -> None:
        self.ids: list[int] = []
        self._cache = None
        # float64 sums: rolling back subtracts, and the mean must not drift over a long stream.
        self._sums: dict[tuple[str, int], torch.Tensor] = {}
        self._recent: dict[tuple[str, int], torch.Tensor] = {}
        # The last forward step: where it started, the sums before it and the states it produced (float32).
        self._step_start = 0
        self._sums_before: dict[tuple[str, int], torch.Tensor] = {}
        self._step_states: dict[tuple[str, int], torch.Tensor] = {}

    def advance(self, ids: list[int]) -> PooledStates:
        """Mean-pooled states of ``ids`` (float32, one row), running only the tokens not yet cached."""
        return self.advance_many([ids])[0]

    def advance_many(self, targets: Sequence[list[int]]) -> list[PooledStates]:
        """``advance`` each of ``targets`` in turn; a run of targets each beginning the next costs one forward step."""
        results: list[PooledStates] = []
        start = 0
        while start < len(targets):
            end = start + 1
            while end < len(targets) and _is_prefix(targets[end - 1], targets[end]):
                end += 1
            results += self._advance_run(targets[start:end])
            start = end
        return results

    @torch.inference_mode()
    def _advance_run(self, run: Sequence[list[int]]) -> list[PooledStates]:
        if not all(run):
            raise ValueError("cannot pool an empty token sequence")
        results: list[PooledStates] = []
        try:
            # Targets no longer than what is cached already need no forward step: a rollback at most.
            while len(run) > 1 and len(run[0]) <= _common_prefix_length(self.ids, run[-1]):
                self._move_to(run[0])
                results.append(self._means_at([len(run[0])])[0])
                run = run[1:]
            self._move_to(run[-1])
            return results + self._means_at([len(ids) for ids in run])
        finally:
            self._step_states, self._sums_before = {}, {}  # a long step's states are not kept between feeds

    def _move_to(self, ids: list[int]) -> None:
        """Roll the cache back to the longest common prefix with ``ids`` (or start over), then run the rest of ``ids``."""
        from .kv_cache import croppable

        common = _common_prefix_length(self.ids, ids)
        rollback = len(self.ids) - common
        recent = min((len(kept) for kept in self._recent.values()), default=0)
        if common == 0 or rollback > recent or (rollback and not croppable(self._cache)):
            self._start_over()
        elif rollback:
            self._roll_back(common)
        self._step_start = len(self.ids)
        self._sums_before = dict(self._sums)
        self._step_states = {}
        if len(ids) > len(self.ids):
            self._extend(ids[len(self.ids):])

    def _means_at(self, lengths: list[int]) -> list[PooledStates]:
        """Mean-pooled states (float32, one row each) of the first ``length`` cached tokens, for non-decreasing
        lengths from where the last step started to where it ended."""
        means: list[PooledStates] = [{} for _ in lengths]
        inside = [length - self._step_start for length in lengths if self._step_start < length < len(self.ids)]
        for key, total in self._sums.items():
            sums = {len(self.ids): total}
            if self._step_start in lengths:
                sums[self._step_start] = self._sums_before[key]
            if inside:
                sums.update(zip((self._step_start + offset for offset in inside), self._sums_inside(key, inside, total.dtype)))
            for row, length in enumerate(lengths):
                means[row][key] = (sums[length] / length).to(torch.float32).unsqueeze(0)
        return means

    def _sums_inside(self, key: tuple[str, int], offsets: list[int], dtype: torch.dtype) -> torch.Tensor:
        """Sums of the first ``step_start + offset`` states, per offset into the last step (ascending): one segment
        sum per offset, then a running total, never a subtraction."""
        states = self._step_states[key]
        segment = torch.bucketize(torch.arange(offsets[-1], device=states.device),
                                  torch.tensor(offsets, device=states.device), right=True)
        sums = torch.zeros((len(offsets), states.shape[-1]), dtype=dtype, device=states.device)
        sums.index_add_(0, segment, states[:offsets[-1]].to(dtype))
        sums = sums.cumsum(dim=0)
        before = self._sums_before.get(key)
        return sums if before is None else sums + before

    def _roll_back(self, length: int) -> None:
        drop = len(self.ids) - length
        self._cache.crop(-drop)
        for key in self._sums:
            self._sums[key] -= self._recent[key][-drop:].sum(dim=0, dtype=self._sums[key].dtype)
            self._recent[key] = self._recent[key][:-drop]
        self.ids = self.ids[:length]

    def _extend(self, new_ids: list[int]) -> None:
        from .kv_cache import stream_cache

        backbone = self.backbone
        if self._cache is None:
            self._cache = stream_cache(backbone.model.config, self.capacity)
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
                use_cache=True, **{self._cache_keyword: self._cache},
            )
        except BaseException:
            self._start_over()  # a half-updated cache must not be reused
            raise
        self.tokens_run += len(new_ids)
        self.steps_run += 1
        for key, states in gathered.items():
            added = states.sum(dim=0, dtype=_sum_dtype(states.device))
            self._sums[key] = self._sums[key] + added if key in self._sums else added
            kept = self._recent.get(key)
            self._recent[key] = (states if kept is None else torch.cat([kept, states]))[-self.keep:]
        self._step_states = gathered
        self.ids = self.ids + list(new_ids)


def _sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _is_prefix(first: list[int], second: list[int]) -> bool:
    return len(first) <= len(second) and second[:len(first)] == first


def _common_prefix_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length
