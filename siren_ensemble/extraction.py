"""One forward pass of a frozen backbone, reduced on the fly to mean-pooled per-layer states.

Hooks pool each needed block's output as soon as it is computed, so no layer's full hidden
states are kept; the pass stops right after the deepest block any head reads (early exit).
Reading block ``l``'s output is exactly ``hidden_states[l + 1]`` for every layer but the last,
whose entry in ``hidden_states`` carries the final norm: that one is read from the model's
``last_hidden_state``, as llm-siren reads ``hidden_states[-1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable

import torch
from torch import nn

from .backbones.base import BackboneAdapter, BackboneSpec
from .encoding import EncodedText, encode_texts, pad_batch
from .head import FeatureRequest, SirenHead

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
    def load(cls, adapter: BackboneAdapter) -> "LoadedBackbone":
        model = adapter.load_model()
        tokenizer = adapter.load_tokenizer()
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

    def encode(self, texts: list[str], max_length: int) -> list[EncodedText]:
        return encode_texts(self.tokenizer, texts, max_length)

    @torch.inference_mode()
    def pooled_states(self, sequences: list[list[int]], wanted: Collection[tuple[str, int]], early_exit: bool = True) -> PooledStates:
        """Mean-pooled states for each ``(pooling, layer)`` in ``wanted``, in float32, one row per sequence."""
        input_ids, attention_mask = pad_batch(
            sequences, self.tokenizer.pad_token_id, self.tokenizer.padding_side, self.input_device
        )
        blocks = self.blocks
        last = self.num_layers - 1
        pooled: PooledStates = {}

        def pool_into(key):
            def hook(_module, _args, output):
                states = output[0] if isinstance(output, tuple) else output
                pooled[key] = masked_mean(states, attention_mask)
            return hook

        handles = []
        for pooling, layer in sorted(wanted, key=lambda item: item[1]):
            if pooling == "mlp_mean":
                handles.append(self.adapter.mlp(blocks[layer]).register_forward_hook(pool_into((pooling, layer))))
            elif layer != last:
                handles.append(blocks[layer].register_forward_hook(pool_into((pooling, layer))))
        needs_final_state = ("residual_mean", last) in wanted
        if early_exit and not needs_final_state:
            deepest = max(layer for _, layer in wanted)
            handles.append(blocks[deepest].register_forward_hook(_stop_forward))
        try:
            output = self.model(
                input_ids=input_ids, attention_mask=attention_mask, return_dict=True,
                **self.forward_kwargs,
            )
            if needs_final_state:
                pooled[("residual_mean", last)] = masked_mean(output.last_hidden_state, attention_mask)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return pooled


def _stop_forward(_module, _args, _output):
    raise _StopForward
