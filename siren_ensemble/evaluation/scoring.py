"""Member scores computed from cached per-layer features, so evaluation never runs a backbone twice.

Features come from the same pooled forward pass the runtime uses (``FeatureExtractor``), and the
head turns them into scores exactly as it does at runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..backbones.base import BackboneSpec
from ..config import EnsembleConfig
from ..data.records import SafetyRecord
from ..extraction import LoadedBackbone
from ..features import weighted_neuron_features
from ..members import MemberPlan
from ..training.feature_cache import FeatureExtractor, LayerFeatures


class FeatureScorer:
    def __init__(self, config: EnsembleConfig, plans: list[MemberPlan], cache_dir: str | Path | None = None,
                 progress: bool = False):
        self.plans = plans
        self.progress = progress
        self._backbones: dict[BackboneSpec, LoadedBackbone] = {}
        self._extractors: dict[tuple, FeatureExtractor] = {}
        for plan in plans:
            key = self.extractor_key(plan)
            if key not in self._extractors:
                self._extractors[key] = FeatureExtractor(
                    plan.adapter, loaded=self._backbones, max_length=plan.head.max_length, pooling=plan.head.config.pooling,
                    max_tokens=config.batching.max_tokens, max_texts=config.batching.max_texts, cache_dir=cache_dir,
                    max_layer=max(plan.head.config.layers),
                )

    @staticmethod
    def extractor_key(plan: MemberPlan) -> tuple:
        # Heads of one backbone that read to different depths extract apart; each reads every shard deep enough.
        return (plan.spec, plan.head.max_length, plan.head.config.pooling, max(plan.head.config.layers))

    def extractor(self, plan: MemberPlan) -> FeatureExtractor:
        return self._extractors[self.extractor_key(plan)]

    def layer_features(self, plan: MemberPlan, records: Sequence[SafetyRecord], description: str = "features") -> LayerFeatures:
        texts = [record.scored_text for record in records]
        return self.extractor(plan).features(texts, self.progress, description=f"{plan.name} {description}")

    @staticmethod
    def head_scores(plan: MemberPlan, features: LayerFeatures) -> np.ndarray:
        plan.head.to("cpu")
        pooled = {layer: torch.as_tensor(features[layer]) for layer in plan.head.config.layers}
        return plan.head(pooled).double().numpy()

    @staticmethod
    def category_scores(plan: MemberPlan, features: LayerFeatures) -> np.ndarray | None:
        """The member's category head's probabilities (texts x its categories), or None without one."""
        if plan.categories is None:
            return None
        plan.head.to("cpu")
        plan.categories.to("cpu")
        pooled = {layer: torch.as_tensor(features[layer]) for layer in plan.head.config.layers}
        with torch.inference_mode():
            return plan.categories(plan.head.features(pooled)).double().numpy()

    def member_scores(self, records: Sequence[SafetyRecord], description: str = "features") -> np.ndarray:
        """Scores, one column per member in config order."""
        return np.stack([self.head_scores(plan, self.layer_features(plan, records, description)) for plan in self.plans], axis=1)


    def stage2_inputs(self, plan: MemberPlan, features: LayerFeatures) -> np.ndarray:
        """What the head's MLP reads: its alpha-weighted safety neurons (to refit the MLP on other data)."""
        head = plan.head.config
        return weighted_neuron_features(features, head.neurons(), {layer: head.layer_weight(layer) for layer in head.layers})
