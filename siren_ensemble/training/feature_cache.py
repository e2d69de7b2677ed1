"""Mean-pooled per-layer features of labelled texts, extracted once and cached on disk (safetensors).

The cache key covers everything that changes the numbers: the backbone (adapter, weights: the pinned
sha256, else model, GGUF file and revision; dtype), the pooling, ``max_length`` and the exact texts. Re-runs, sweeps and the
leave-one-source-out evaluation therefore never run the backbone twice on the same data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from ..backbones.base import BackboneAdapter, BackboneSpec
from ..cache import cache_root
from ..encoding import plan_batches
from ..extraction import LoadedBackbone
from ..text import clean_text

LayerFeatures = dict[int, np.ndarray]


def texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


class FeatureExtractor:
    """Pooled features of every layer of one backbone; the backbone loads only on a cache miss."""

    def __init__(self, adapter: BackboneAdapter, max_length: int = 512, pooling: str = "residual_mean",
                 max_tokens: int = 8192, max_texts: int = 64, cache_dir: str | Path | None = None,
                 loaded: dict[BackboneSpec, LoadedBackbone] | None = None):
        self.adapter = adapter
        self.max_length = max_length
        self.pooling = pooling
        self.max_tokens = max_tokens
        self.max_texts = max_texts
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "features"
        #: Loaded backbones by spec; extractors given the same dict share them (one load per backbone).
        self.loaded = loaded if loaded is not None else {}

    @property
    def backbone(self) -> LoadedBackbone:
        spec = self.adapter.spec
        if spec not in self.loaded:
            self.loaded[spec] = LoadedBackbone.load(self.adapter)
        return self.loaded[spec]

    def cache_key(self, texts: Sequence[str]) -> str:
        spec = self.adapter.spec
        # Pinned GGUF weights are named by their sha256, wherever the file lives.
        weights = {"sha256": spec.sha256} if spec.sha256 else {
            "model": spec.model, "gguf_file": spec.gguf_file, "gguf_parts": spec.gguf_parts, "revision": spec.revision,
        }
        identity = {
            "adapter": spec.adapter, **weights, "dtype": spec.dtype, "pooling": self.pooling,
            "max_length": self.max_length, "texts": texts_digest(texts),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def features(self, texts: Sequence[str], progress: bool = False, description: str = "features") -> LayerFeatures:
        """Features of all layers for ``texts`` (scored as the runtime scores them), from the cache when present."""
        path = self.cache_dir / f"{self.cache_key(texts)}.safetensors"
        if path.is_file():
            stored = load_file(str(path))
            return {int(name.removeprefix("layer")): array for name, array in stored.items()}
        layer_features = self._extract(list(texts), progress, description)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file({f"layer{layer}": array for layer, array in layer_features.items()}, str(partial))
        partial.replace(path)  # atomic: an interrupted run never leaves a truncated cache entry
        return layer_features

    def _extract(self, texts: list[str], progress: bool, description: str) -> LayerFeatures:
        backbone = self.backbone
        wanted = {(self.pooling, layer) for layer in range(backbone.num_layers)}
        encoded = backbone.encode([clean_text(text) for text in texts], self.max_length)
        lengths = [len(item.ids) for item in encoded]
        out = {layer: np.zeros((len(texts), backbone.hidden_size), dtype=np.float32) for layer in range(backbone.num_layers)}
        batches = plan_batches(lengths, self.max_tokens, self.max_texts)
        with tqdm(total=sum(lengths), desc=description, unit="tok", unit_scale=True, disable=not progress, leave=False) as bar:
            for batch in batches:
                pooled = backbone.pooled_states([encoded[i].ids for i in batch], wanted)
                rows = torch.as_tensor(batch)
                for (_, layer), values in pooled.items():
                    out[layer][rows.numpy()] = values.float().cpu().numpy()
                bar.update(sum(lengths[i] for i in batch))
        return out
