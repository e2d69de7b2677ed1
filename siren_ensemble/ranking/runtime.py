"""Ranking at run time: the members' SRR rankers read the loaded backbones, as the heads do.

A member has a ranker when its head directory holds ``ranker.json`` and ``ranker.safetensors``
(``siren-ensemble train-ranker --out <head dir>``); rankers load on the first ``rank`` call and are
checked against their member's backbone then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..config import BatchingConfig
from ..encoding import plan_batches
from ..errors import InputError
from ..extraction import LoadedBackbone
from ..members import MemberPlan
from ..text import check_encodable, clean_text, join_prompt_response
from .model import RANKER_CONFIG_FILE, SRRRanker, has_ranker
from .result import AUTO, REQUESTED_METHODS



def check_rank_request(prompt, candidates, method) -> None:
    if not isinstance(prompt, str):
        raise InputError(f"prompt: expected a string, got {type(prompt).__name__}")
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
        raise InputError(f"candidates: expected a list of strings, got {type(candidates).__name__}")
    if not candidates:
        raise InputError("candidates: empty; give at least one response to rank")
    for index, candidate in enumerate(candidates):
        if not isinstance(candidate, str):
            raise InputError(f"candidates[{index}]: expected a string, got {type(candidate).__name__}")
    for where, text in [("prompt", prompt), *((f"candidates[{index}]", text) for index, text in enumerate(candidates))]:
        try:
            check_encodable(text)
        except ValueError as error:
            raise InputError(f"{where}: {error}") from None
    if method not in REQUESTED_METHODS:
        raise InputError(f"method: expected one of {', '.join(REQUESTED_METHODS)}, got {method!r}")


def resolve_method(method: str, rankers: Mapping[str, SRRRanker]) -> str:
    """``auto`` is ``guarded`` when any member has a ranker, else ``siren``; ``srr`` or ``guarded`` without one is refused."""
    if method == AUTO:
        return "guarded" if rankers else "siren"
    if method in ("srr", "guarded") and not rankers:
        raise InputError(f"method {method!r}: no member has a ranker ({RANKER_CONFIG_FILE} beside its head); train one with "
                         "`siren-ensemble train-ranker`, or rank with method 'siren'")
    return method


def guarded_scores(risks: Sequence[float], flagged: Sequence[bool]) -> np.ndarray:
    """SRR risks (in [0, 1]) plus 1 where the ensemble flags the pair: every flagged candidate ranks after every
    passed one, and the ranker orders each of the two sets (the helpful answer before a refusal, among the passed)."""
    return np.asarray(risks, dtype=np.float64) + np.asarray(flagged, dtype=np.float64)


def load_rankers(plans: Sequence[MemberPlan], backbones: Mapping[str, LoadedBackbone]) -> dict[str, SRRRanker]:
    """The ranker beside each member's head, checked against that member's backbone; members without one are left out."""
    rankers = {}
    for plan in plans:
        directory = Path(plan.head.source)
        if has_ranker(directory):
            ranker = SRRRanker.load(directory)
            backbone = backbones[plan.name]
            ranker.check_backbone(backbone.num_layers, backbone.hidden_size)
            rankers[plan.name] = ranker
    return rankers


def srr_risks(ranker: SRRRanker, backbone: LoadedBackbone, prompt: str, candidates: Sequence[str],
              batching: BatchingConfig) -> np.ndarray:
    """Each candidate's risk under ``ranker`` (lower ranks first), from ``backbone``'s pooled states."""
    texts = [prompt, *(join_prompt_response(prompt, candidate) for candidate in candidates)]
    features = pooled_features(backbone, texts, ranker.config.layers, ranker.config.pooling, ranker.config.max_length,
                               batching)
    return ranker.risks(features[0], features[1:]).double().numpy()


def pooled_features(backbone: LoadedBackbone, texts: Sequence[str], layers: Sequence[int], pooling: str, max_length: int,
                    batching: BatchingConfig) -> torch.Tensor:
    """Each text's pooled states of ``layers``, concatenated in that order: (texts, layers x hidden)."""
    encoded = backbone.encode([clean_text(text) for text in texts], max_length)
    wanted = {(pooling, layer) for layer in layers}
    rows = torch.zeros((len(texts), len(layers) * backbone.hidden_size))
    for batch in plan_batches([len(item.ids) for item in encoded], batching.max_tokens, batching.max_texts,
                              batching.max_padding):
        pooled = backbone.pooled_states([encoded[i].ids for i in batch], wanted)
        rows[batch] = torch.cat([pooled[(pooling, layer)].float().cpu() for layer in layers], dim=1)
    return rows
