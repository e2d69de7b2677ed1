"""One forward pass of a frozen backbone, reduced on the fly to mean-pooled per-layer states.

Hooks pool each needed block's output as soon as it is computed, so no layer's full hidden
states are kept; the pass stops right after the deepest block any head reads (early exit).
Reading block ``l``'s output is exactly ``hidden_states[l + 1]`` for every layer but the last,
whose entry in ``hidden_states`` carries the final norm: that one is read from the model's
``last_hidden_state``, as llm-siren reads ``hidden_states[-1]``.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable, Collection, Iterable

import torch
from torch import nn

from .backbones.base import BackboneAdapter, BackboneSpec
from .encoding import EncodedText, encode_texts, pad_batch
from .head import FeatureRequest, SirenHead
from .precision import INT8
from .weights import ResolvedWeights

PooledStates = dict[tuple[str, int], torch.Tensor]
#: The keyword a model's ``forward`` takes its KV cache under, newest first: transformers 5.24 renamed
#: ``past_key_values`` to ``cache`` (the old name lives on as a deprecated alias, absent from the signature).
CACHE_KEYWORDS = ("cache", "past_key_values")


@dataclass(frozen=True)
class StreamSupport:
    """How a backbone's streams run: from its KV cache (passed under ``cache_keyword``), or re-encoding, and why."""

    incremental: bool
    cache_keyword: str | None = None
    #: Why a stream re-encodes the whole text on every chunk (``None`` when incremental).
    reason: str | None = None

    @classmethod
    def no(cls, reason: str) -> "StreamSupport":
        return cls(False, reason=reason)

    def describe(self) -> str:
        if self.incremental:
            return f"incremental (KV cache passed as `{self.cache_keyword}`)"
        return f"re-encodes the whole text on every chunk: {self.reason}"


class _StopForward(Exception):
    """Raised from a hook once every requested layer is pooled."""


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: ``states`` (batch, tokens, hidden), ``mask`` (batch, tokens) of 0/1."""
    mask = mask.to(device=states.device, dtype=torch.float32)
    lengths = mask.sum(dim=1).clamp(min=1).unsqueeze(-1)
    return torch.einsum("bt,bth->bh", mask, states.to(torch.float32)) / lengths


def union_of(requests: Iterable[FeatureRequest]) -> set[tuple[str, int]]:
    return {(request.pooling, layer) for request in requests for layer in request.layers}


def stream_support_before_loading(spec: BackboneSpec, model_class: type) -> StreamSupport | None:
    """What can be told of ``model_class``'s streams without weights: why they must re-encode, or ``None`` when
    only the probe of a loaded model (causality, a cached pass equal to a full one) can tell."""
    if spec.dtype == INT8:
        # Each matmul quantises its input with one scale for all tokens: later tokens move earlier states.
        return StreamSupport.no("int8 quantises each pass's activations as a whole, so states depend on later tokens")
    if cache_keyword(model_class.forward) is None:
        return StreamSupport.no(f"{model_class.__name__}.forward takes no KV cache "
                                f"(no argument named {' or '.join(CACHE_KEYWORDS)})")
    return None


def cache_keyword(forward: Callable) -> str | None:
    """The keyword ``forward`` takes a KV cache under, or ``None`` when it names none of ``CACHE_KEYWORDS``."""
    parameters = inspect.signature(forward).parameters
    return next((name for name in CACHE_KEYWORDS if name in parameters), None)


@dataclass
class LoadedBackbone:
    spec: BackboneSpec
    adapter: BackboneAdapter
    model: nn.Module
    tokenizer: object
    num_layers: int
    hidden_size: int
    blocks: nn.ModuleList
    forward_kwargs: dict

    @classmethod
    def load(cls, adapter: BackboneAdapter, weights: ResolvedWeights) -> "LoadedBackbone":
        """``adapter``'s model and tokenizer from ``weights`` (resolved from ``adapter.spec.weights``)."""
        model = adapter.load_model(weights)
        tokenizer = adapter.load_tokenizer(weights)
        return cls(
            spec=adapter.spec,
            adapter=adapter,
            model=model,
            tokenizer=tokenizer,
            num_layers=adapter.num_layers(model.config),
            hidden_size=adapter.hidden_size(model.config),
            blocks=adapter.blocks(model),
            forward_kwargs=adapter.forward_kwargs(model),
        )

    def check_readable(self, head: SirenHead) -> None:
        """Fail at load time, not at the first request, when ``head`` cannot read this backbone."""
        head.check_backbone(self.num_layers, self.hidden_size)
        if head.config.pooling == "mlp_mean":
            for layer in head.config.layers:
                self.adapter.mlp(self.blocks[layer])

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @functools.cached_property
    def stream_support(self) -> "StreamSupport":
        """Whether a stream may reuse this backbone's KV cache, and why not: probed once, so any architecture answers.

        It must be causal (changing the last token leaves earlier positions' states unchanged) and
        a cached pass over a sequence's tail must give the states a full pass gives.
        """
        from transformers import DynamicCache

        unfit = stream_support_before_loading(self.spec, type(self.model))
        if unfit is not None:
            return unfit
        keyword = cache_keyword(self.model.forward)
        ids = self.tokenizer("Is this backbone causal? It should be.", add_special_tokens=True)["input_ids"]
        if len(ids) < 4:
            return StreamSupport.no("its tokenizer gives too few tokens to probe causality")
        device = self.input_device
        other = ids[:-1] + [ids[-2]] if ids[-1] != ids[-2] else ids[:-1] + [ids[0]]
        try:
            with torch.inference_mode():
                full, changed = (
                    self.model(input_ids=torch.tensor([sequence], device=device), **self.forward_kwargs).last_hidden_state[0]
                    for sequence in (ids, other)
                )
                cache = DynamicCache(config=self.model.config)
                self.model(input_ids=torch.tensor([ids[:-2]], device=device), use_cache=True, **{keyword: cache})
                tail = self.model(
                    input_ids=torch.tensor([ids[-2:]], device=device), use_cache=True, **{keyword: cache},
                    attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
                ).last_hidden_state[0]
        except Exception as error:  # an architecture whose forward does not take a cache this way
            return StreamSupport.no(f"a cached forward pass failed: {type(error).__name__}: {error}")
        if not torch.allclose(full[:-1], changed[:-1], rtol=1e-3, atol=1e-3):
            return StreamSupport.no("it is not causal: a later token changes earlier positions' states")
        scale = float(full.abs().max()) or 1.0
        gap = float((tail - full[-2:]).abs().max())
        if gap > 2e-2 * scale:
            return StreamSupport.no(f"a cached pass gives other states than a full pass (max difference {gap:.3g})")
        return StreamSupport(True, keyword)

    def encode(self, texts: list[str], max_length: int) -> list[EncodedText]:
        return encode_texts(self.tokenizer, texts, max_length)

    @torch.inference_mode()
    def pooled_states(self, sequences: list[list[int]], wanted: Collection[tuple[str, int]], early_exit: bool = True) -> PooledStates:
        """Mean-pooled states for each ``(pooling, layer)`` in ``wanted``, in float32, one row per sequence."""
        input_ids, attention_mask = pad_batch(
            sequences, self.tokenizer.pad_token_id, self.tokenizer.padding_side, self.input_device
        )
        pooled: PooledStates = {}

        def pool(key, states):
            pooled[key] = masked_mean(states, attention_mask)

        self.run_hooked(
            wanted, pool, early_exit=early_exit,
            input_ids=input_ids, attention_mask=attention_mask, **self.forward_kwargs,
        )
        return pooled

    def run_hooked(self, wanted: Collection[tuple[str, int]], on_states: Callable[[tuple[str, int], torch.Tensor], None],
                   early_exit: bool = True, **model_inputs) -> None:
        """Run the model, handing each wanted ``(pooling, layer)``'s states (batch, tokens, hidden) to ``on_states``.

        Each state is handed over as soon as its block has run; the pass stops right after the
        deepest wanted block unless the last layer (read from ``last_hidden_state``) is wanted.
        """
        blocks = self.blocks
        last = self.num_layers - 1

        def hand_over(key):
            def hook(_module, _args, output):
                on_states(key, output[0] if isinstance(output, tuple) else output)
            return hook

        handles = []
        for pooling, layer in sorted(wanted, key=lambda item: item[1]):
            if pooling == "mlp_mean":
                handles.append(self.adapter.mlp(blocks[layer]).register_forward_hook(hand_over((pooling, layer))))
            elif layer != last:
                handles.append(blocks[layer].register_forward_hook(hand_over((pooling, layer))))
        needs_final_state = ("residual_mean", last) in wanted
        if early_exit and not needs_final_state:
            deepest = max(layer for _, layer in wanted)
            handles.append(blocks[deepest].register_forward_hook(_stop_forward))
        try:
            output = self.model(return_dict=True, **model_inputs)
            if needs_final_state:
                on_states(("residual_mean", last), output.last_hidden_state)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()


def _stop_forward(_module, _args, _output):
    raise _StopForward
