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


class _StopForward(Exception):
    """Raised from a hook once every requested layer is pooled."""


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: ``states`` (batch, tokens, hidden), ``mask`` (batch, tokens) of 0/1."""
    mask = mask.to(device=states.device, dtype=torch.float32)
    lengths = mask.sum(dim=1).clamp(min=1).unsqueeze(-1)
    return torch.einsum("bt,bth->bh", mask, states.to(torch.float32)) / lengths


def union_of(requests: Iterable[FeatureRequest]) -> set[tuple[str, int]]:
    return {(request.pooling, layer) for request in requests for layer in request.layers}


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
    def streams_incrementally(self) -> bool:
        """Whether a stream may reuse this backbone's KV cache: probed once, so any architecture answers.

        It must be causal (changing the last token leaves earlier positions' states unchanged) and
        a cached pass over a sequence's tail must give the states a full pass gives.
        """
        from transformers import DynamicCache

        if self.spec.dtype == INT8:
            return False  # each matmul quantises its input with one scale for all tokens: later tokens move earlier states
        if "past_key_values" not in inspect.signature(self.model.forward).parameters:
            return False
        ids = self.tokenizer("Is this backbone causal? It should be.", add_special_tokens=True)["input_ids"]
        if len(ids) < 4:
            return False
        device = self.input_device
        other = ids[:-1] + [ids[-2]] if ids[-1] != ids[-2] else ids[:-1] + [ids[0]]
        try:
            with torch.inference_mode():
                full, changed = (
                    self.model(input_ids=torch.tensor([sequence], device=device), **self.forward_kwargs).last_hidden_state[0]
                    for sequence in (ids, other)
                )
                cache = DynamicCache(config=self.model.config)
                self.model(input_ids=torch.tensor([ids[:-2]], device=device), past_key_values=cache, use_cache=True)
                tail = self.model(
                    input_ids=torch.tensor([ids[-2:]], device=device), past_key_values=cache, use_cache=True,
                    attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
                ).last_hidden_state[0]
        except Exception:  # an architecture whose forward does not take a cache this way
            return False
        causal = torch.allclose(full[:-1], changed[:-1], rtol=1e-3, atol=1e-3)
        scale = float(full.abs().max()) or 1.0
        cache_agrees = float((tail - full[-2:]).abs().max()) <= 2e-2 * scale
        return causal and cache_agrees

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
