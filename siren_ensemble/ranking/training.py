"""Training the SRR ranker of one member: groups from the split, features from the cache, a list-level loss.

The loss is ListNet's: the softmax over each group's logits against the preferred candidates' share
(cross-entropy), plus a pointwise term (binary cross-entropy of each candidate's logit against
"preferred") so that ``sigmoid(logit)`` reads as a probability and scores compare across groups.
Harmful-request and benign-request groups weigh half each, so over-refusal costs as much as
compliance. Trained on the train split; the epoch kept is the best on validation (pairwise accuracy,
then loss). Seeded: same data and seed give the same ranker.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.records import read_dataset
from ..errors import InputError
from ..training.feature_cache import FeatureExtractor
from .batches import GroupBatch, group_batch, real_rows
from .features import feature_table, group_texts
from .groups import build_groups
from .metrics import group_outcome, summarise
from .model import RankerConfig, SRRRanker

logger = logging.getLogger(__name__)

RANKER_REPORT_FILE = "ranker_report.json"


@dataclass(frozen=True)
class RankerOptions:
    #: Backbone layers to read; default: a quarter, half and three quarters of the depth (``middle_layers``).
    layers: tuple[int, ...] | None = None
    width: int = 128
    heads: int = 4
    encoder_layers: int = 1
    dropout: float = 0.1
    temperature: float = 0.1
    epochs: int = 150
    patience: int = 20
    batch_groups: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    pointwise_weight: float = 0.5
    seed: int = 0
    #: Sources whose groups are left out of training (and validation), to measure the ranker on them as unseen.
    exclude_sources: tuple[str, ...] = ()


def middle_layers(depth: int) -> tuple[int, ...]:
    """A quarter, half and three quarters of the way up (SmolLM2: 7, 15, 22 of 30; Qwen2.5: 6, 12, 18 of 24)."""
    return tuple(sorted({depth // 4, depth // 2, (3 * depth) // 4}))


def train_ranker(extractor: FeatureExtractor, data: str | Path, out: str | Path, options: RankerOptions = RankerOptions(),
                 progress: bool = False) -> dict:
    """Train on ``data``'s train split, keep the best epoch on validation, write the ranker and its report to ``out``."""
    started = time.perf_counter()
    splits = {name: read_dataset(data, name) for name in ("train", "validation")}
    every_group = {name: build_groups(records, options.seed) for name, records in splits.items()}
    groups = {name: [group for group in found if group.source not in options.exclude_sources]
              for name, found in every_group.items()}
    for name, found in groups.items():
        if not found:
            raise InputError(f"{data}/{name}.jsonl: no ranking groups (a group needs response-level records: a "
                             "harmful answer, or a helpful answer to a benign prompt)")
    depth = _depth(extractor)
    layers = options.layers or middle_layers(depth)
    outside = [layer for layer in layers if not 0 <= layer < depth]
    if outside:
        raise InputError(f"--layers: layer {outside[0]} is outside the backbone's {depth} layers (0-{depth - 1})")
    logger.info("ranking groups: %d train, %d validation; features of layers %s", len(groups["train"]),
                len(groups["validation"]), ", ".join(map(str, layers)))
    # Every group's texts, excluded ones too: the same list as a run without exclusions, so the cache serves both.
    wanted = group_texts([*every_group["train"], *every_group["validation"]])
    table = feature_table(extractor, list(splits.values()), wanted, layers, progress)
    train = group_batch(groups["train"], table, layers)
    validation = group_batch(groups["validation"], table, layers)
    extracted = time.perf_counter()

    config = RankerConfig(
        layers=tuple(layers), pooling=extractor.pooling, max_length=extractor.max_length, num_layers=depth,
        hidden_size=int(train.prompts.shape[1] // len(layers)), backbone=_backbone_description(extractor),
        width=options.width, heads=options.heads, encoder_layers=options.encoder_layers, dropout=options.dropout,
        temperature=options.temperature, sources=tuple(sorted({group.source for group in groups["train"]})),
    )
    ranker, history = fit(config, train, validation, options)
    ranker.save(out)
    best = max(history, key=_selection_key)
    report = {
        "config": config.model_dump(mode="json"),
        "options": asdict(options),
        "data": str(data),
        "groups": {name: _group_counts(found) for name, found in groups.items()},
        "best_epoch": best["epoch"],
        "validation": best["validation"],
        "history": history,
        "seconds": {"features": round(extracted - started, 1), "training": round(time.perf_counter() - extracted, 1)},
    }
    (Path(out) / RANKER_REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def fit(config: RankerConfig, train: GroupBatch, validation: GroupBatch,
        options: RankerOptions) -> tuple[SRRRanker, list[dict]]:
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    ranker = SRRRanker(config)
    ranker.set_standardisation(torch.from_numpy(real_rows(train)))
    optimiser = torch.optim.AdamW(ranker.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    weights = _group_weights(train.harmful_request)
    history: list[dict] = []
    best_state, best_key, since_best = None, None, 0
    for epoch in range(1, options.epochs + 1):
        ranker.train()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for start in range(0, len(train), options.batch_groups):
            index = order[start:start + options.batch_groups]
            batch = train.select(index)
            loss = ranking_loss(ranker(batch.prompts, batch.candidates, batch.mask), batch, weights[index],
                                options.pointwise_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        entry = {"epoch": epoch, "train_loss": round(float(np.mean(losses)), 5),
                 "validation": evaluate_batch(ranker, validation, options.pointwise_weight)}
        history.append(entry)
        key = _selection_key(entry)
        if best_key is None or key > best_key:
            best_state, best_key, since_best = copy.deepcopy(ranker.state_dict()), key, 0
        else:
            since_best += 1
            if since_best >= options.patience:
                break
    ranker.load_state_dict(best_state)
    return ranker.eval().requires_grad_(False), history


def ranking_loss(logits: torch.Tensor, batch: GroupBatch, weights: torch.Tensor, pointwise_weight: float) -> torch.Tensor:
    """Per group: ListNet cross-entropy + ``pointwise_weight`` x mean BCE of its candidates; weighted mean over groups."""
    target = batch.preferred / batch.preferred.sum(dim=1, keepdim=True).clamp(min=1.0)
    log_probabilities = torch.log_softmax(logits, dim=1).masked_fill(~batch.mask, 0.0)
    listwise = -(target * log_probabilities).sum(dim=1)
    finite = logits.masked_fill(~batch.mask, 0.0)
    pointwise = F.binary_cross_entropy_with_logits(finite, batch.preferred, reduction="none").masked_fill(~batch.mask, 0.0)
    pointwise = pointwise.sum(dim=1) / batch.mask.sum(dim=1)
    return ((listwise + pointwise_weight * pointwise) * weights).sum() / weights.sum()


@torch.no_grad()
def evaluate_batch(ranker: SRRRanker, batch: GroupBatch, pointwise_weight: float) -> dict:
    ranker.eval()
    logits = ranker(batch.prompts, batch.candidates, batch.mask)
    loss = ranking_loss(logits, batch, _group_weights(batch.harmful_request), pointwise_weight)
    outcomes = [
        group_outcome((-logits[row][batch.mask[row]]).tolist(), batch.preferred[row][batch.mask[row]].bool().tolist())
        for row in range(len(batch))
    ]
    return {"loss": round(float(loss), 5), **summarise(outcomes).to_dict()}


def _selection_key(entry: dict) -> tuple[float, float]:
    return (entry["validation"]["pairwise_accuracy"] or 0.0, -entry["validation"]["loss"])


def _group_weights(harmful_request: torch.Tensor) -> torch.Tensor:
    """Half the weight to each kind of group, whatever their counts."""
    harmful = harmful_request.float()
    counts = torch.stack([(1 - harmful).sum(), harmful.sum()]).clamp(min=1.0)
    return torch.where(harmful_request, 0.5 / counts[1], 0.5 / counts[0]) * len(harmful_request)


def _group_counts(groups) -> dict:
    counts: dict[str, int] = {}
    for group in groups:
        counts[f"{group.source} ({group.kind})"] = counts.get(f"{group.source} ({group.kind})", 0) + 1
    return {"total": len(groups), "by_source": dict(sorted(counts.items()))}


def _depth(extractor: FeatureExtractor) -> int:
    adapter = extractor.adapter
    return adapter.num_layers(adapter.load_config(extractor.backbone_weights))


def _backbone_description(extractor: FeatureExtractor) -> dict:
    spec = extractor.adapter.spec
    weights = {"sha256": spec.sha256} if spec.sha256 else {"model": spec.model, "revision": spec.revision}
    return {"adapter": spec.adapter, **weights, "dtype": spec.dtype}
