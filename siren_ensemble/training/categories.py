"""Training a category head beside an existing SIREN head, on the features that head reads.

The binary head is never touched: its selected neurons and layer weights define the inputs, which
come from the feature cache (``train`` filled it; with a cold cache they are extracted as ``train``
extracts them). A few candidates (linear, and a small MLP, at some weight decays) are fitted on the
train split and the one with the best validation macro-F1 (at 0.5; mean AUROC breaks ties) is kept.
Categories with fewer than ``min_train_examples`` harmful train records are left out of the head.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..category_head import CategoryHead, CategoryHeadConfig, CategoryMLP, features_digest
from ..data.records import read_dataset
from ..errors import InputError
from ..features import weighted_neuron_features
from ..head import SirenHead
from ..taxonomy import CATEGORY_KEYS
from .category_data import (category_targets, macro_f1, mean_auroc, per_category_metrics,
                            positives_per_category)
from .feature_cache import FeatureExtractor
from .pipeline import data_fingerprint, load_split

logger = logging.getLogger(__name__)

CATEGORY_REPORT_FILE = "categories_report.json"
#: Weight of a category's positives in the loss, at most this many times its negatives' (rare categories).
MAX_POSITIVE_WEIGHT = 20.0


@dataclass(frozen=True)
class CategoryCandidate:
    hidden_dims: tuple[int, ...]
    weight_decay: float
    dropout: float = 0.0

    def describe(self) -> str:
        shape = "linear" if not self.hidden_dims else f"MLP {list(self.hidden_dims)} dropout {self.dropout}"
        return f"{shape}, weight decay {self.weight_decay:g}"


DEFAULT_CANDIDATES = (
    CategoryCandidate((), 1e-2), CategoryCandidate((), 1.0), CategoryCandidate((64,), 1e-2, 0.2),
)


@dataclass(frozen=True)
class CategoryTrainOptions:
    seed: int = 0
    min_train_examples: int = 10
    epochs: int = 40
    #: At least this many optimiser steps, however few batches an epoch has (small data).
    min_steps: int = 600
    batch_size: int = 256
    learning_rate: float = 1e-3
    candidates: tuple[CategoryCandidate, ...] = DEFAULT_CANDIDATES


def fit_category_mlp(x: np.ndarray, labels: np.ndarray, config: CategoryHeadConfig, weight_decay: float,
                     options: CategoryTrainOptions) -> CategoryMLP:
    """An MLP fitted with AdamW on binary cross-entropy, positives weighted by sqrt(negatives / positives)."""
    torch.manual_seed(options.seed)
    mlp = CategoryMLP(config)
    features = torch.as_tensor(x, dtype=torch.float32)
    targets = torch.as_tensor(labels, dtype=torch.float32)
    mean, scale = features.mean(dim=0), features.std(dim=0)
    mlp.feature_mean.copy_(mean)
    mlp.feature_scale.copy_(torch.where(scale > 1e-6, scale, torch.ones_like(scale)))
    positives = targets.sum(dim=0).clamp(min=1.0)
    positive_weight = ((len(targets) - positives) / positives).sqrt().clamp(1.0, MAX_POSITIVE_WEIGHT)
    loss = nn.BCEWithLogitsLoss(pos_weight=positive_weight)
    optimiser = torch.optim.AdamW(mlp.parameters(), lr=options.learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(options.seed)
    mlp.train()
    batches_per_epoch = -(-len(features) // options.batch_size)
    for _ in range(max(options.epochs, -(-options.min_steps // batches_per_epoch))):
        for batch in torch.randperm(len(features), generator=generator).split(options.batch_size):
            optimiser.zero_grad()
            loss(mlp(features[batch]), targets[batch]).backward()
            optimiser.step()
    return mlp.eval().requires_grad_(False)


def predict_categories(mlp: CategoryMLP, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.sigmoid(mlp(torch.as_tensor(x, dtype=torch.float32))).double().numpy()


def train_category_head(extractor: FeatureExtractor, data: str | Path, head_dir: str | Path,
                        options: CategoryTrainOptions = CategoryTrainOptions(), progress: bool = False,
                        cached_only: bool = False) -> dict:
    """Fit a category head for the SIREN head in ``head_dir`` and write it there; returns the report.

    ``cached_only``: refuse to run the backbone; the train and validation features must be in the cache.
    """
    if not Path(data).is_dir():
        raise InputError(f"{data}: training needs a split directory (train.jsonl, validation.jsonl, ...)")
    head = SirenHead.load(head_dir)
    if (extractor.pooling, extractor.max_length) != (head.config.pooling, head.max_length):
        raise InputError(f"{head_dir}: the head reads {head.config.pooling} features of {head.max_length} tokens, "
                         f"the extractor gives {extractor.pooling} of {extractor.max_length}")
    if cached_only:
        _check_cached(extractor, data)
    started = time.perf_counter()
    train, validation = (load_split(extractor, data, split, progress) for split in ("train", "validation"))
    weights = {layer: head.config.layer_weight(layer) for layer in head.config.layers}
    train_x, validation_x = (weighted_neuron_features(split.layers, head.config.neurons(), weights) for split in (train, validation))
    counts = positives_per_category(train.records, CATEGORY_KEYS)
    categories = [key for key in CATEGORY_KEYS if counts[key] >= options.min_train_examples]
    if not categories:
        raise InputError(f"{data}/train.jsonl: no category has {options.min_train_examples} harmful records with "
                         "`categories`; build the data again with `siren-ensemble data build`")
    fit, tune = category_targets(train.records, categories), category_targets(validation.records, categories)
    extracted = time.perf_counter()
    logger.info("category head: %d categories, %d train / %d validation records", len(categories), len(fit.rows), len(tune.rows))

    half = {key: 0.5 for key in categories}
    results = []
    for candidate in options.candidates:
        config = CategoryHeadConfig(categories=categories, input_dim=train_x.shape[1], features_digest=features_digest(head.config),
                                    hidden_dims=list(candidate.hidden_dims), dropout=candidate.dropout)
        mlp = fit_category_mlp(train_x[fit.rows], fit.labels, config, candidate.weight_decay, options)
        metrics = per_category_metrics(tune.labels, predict_categories(mlp, validation_x[tune.rows]), categories, half)
        logger.info("  %s: validation macro-F1 %s", candidate.describe(), macro_f1(metrics))
        results.append((candidate, config, mlp, metrics))
    candidate, config, mlp, metrics = max(results, key=lambda item: (macro_f1(item[3]) or 0.0, mean_auroc(item[3]) or 0.0))
    CategoryHead(config, mlp).save(head_dir)
    report = {
        "data": {"path": str(data), "fingerprint": data_fingerprint(data)},
        "options": {**asdict(options), "candidates": [candidate.describe() for candidate in options.candidates]},
        "train_positives": counts,
        "left_out": [key for key in CATEGORY_KEYS if key not in categories],
        "candidates": [{"candidate": c.describe(), "validation_macro_f1": macro_f1(m), "validation_mean_auroc": mean_auroc(m)}
                       for c, _, _, m in results],
        "chosen": candidate.describe(),
        "chosen_params": asdict(candidate),
        "validation": {key: value.to_dict() for key, value in metrics.items()},
        "validation_macro_f1": macro_f1(metrics),
        "seconds": {"features": round(extracted - started, 1), "fit": round(time.perf_counter() - extracted, 1)},
    }
    (Path(head_dir) / CATEGORY_REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _check_cached(extractor: FeatureExtractor, data: str | Path) -> None:
    for split in ("train", "validation"):
        texts = [record.scored_text for record in read_dataset(data, split)]
        if not extractor.is_cached(texts):
            spec = extractor.adapter.spec
            raise InputError(f"{data}/{split}.jsonl: no cached features for {spec.describe()} ({spec.dtype}, "
                             f"{extractor.pooling}, max_length {extractor.max_length}) in {extractor.cache_dir}; "
                             "leave out --cached-only to extract them, or check --dtype and --cache-dir")


def summarise_categories(report: dict) -> str:
    lines = [f"category head: {report['chosen']}; validation macro-F1 at 0.5: {_number(report['validation_macro_f1'])}",
             "category          train  val  val F1  val AUROC"]
    for key, metrics in report["validation"].items():
        lines.append(f"{key:<16} {report['train_positives'][key]:>6} {metrics['positives']:>4}  {_number(metrics['f1'])}"
                     f"   {_number(metrics['auroc'])}")
    if report["left_out"]:
        lines.append(f"left out (under {report['options']['min_train_examples']} train records): {', '.join(report['left_out'])}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"
