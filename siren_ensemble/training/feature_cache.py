"""Mean-pooled per-layer features of labelled texts, extracted once and cached on disk (safetensors).

The cache key covers everything that changes the numbers: the backbone (adapter, weights: the pinned
sha256, else model, GGUF file and revision; dtype), the pooling, ``max_length`` and the exact texts. Re-runs, sweeps and the
leave-one-source-out evaluation therefore never run the backbone twice on the same data.

Extraction is written in chunks of ``chunk_size`` texts (``<key>.chunks-512/00003.safetensors``) as it goes, so a run
that is stopped resumes at the first missing chunk; the finished chunks are then joined into ``<key>.safetensors``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from ..backbones.base import BackboneAdapter, BackboneSpec
from ..cache import feature_cache_root
from ..encoding import plan_batches
from ..errors import ArtifactError
from ..extraction import LoadedBackbone
from ..text import clean_text
from ..weights import ResolvedWeights, resolve_weights

LayerFeatures = dict[int, np.ndarray]
#: Texts per resumable chunk: a stopped extraction loses at most this many texts' work.
DEFAULT_CHUNK_SIZE = 512
#: A batch closes before padding passes this share of its tokens (padded tokens cost as much as real ones).
MAX_PADDING = 0.25


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
                 loaded: dict[BackboneSpec, LoadedBackbone] | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE):
        self.adapter = adapter
        self.max_length = max_length
        self.pooling = pooling
        self.max_tokens = max_tokens
        self.max_texts = max_texts
        self.cache_dir = Path(cache_dir) if cache_dir is not None else feature_cache_root()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.chunk_size = chunk_size
        #: Loaded backbones by spec; extractors given the same dict share them (one load per backbone).
        self.loaded = loaded if loaded is not None else {}

    @functools.cached_property
    def backbone_weights(self) -> ResolvedWeights:
        """The backbone's weights, resolved (fetched, verified, converted) once, on first use."""
        return resolve_weights(self.adapter.spec.weights)

    @property
    def backbone(self) -> LoadedBackbone:
        spec = self.adapter.spec
        if spec not in self.loaded:
            self.loaded[spec] = LoadedBackbone.load(self.adapter, self.backbone_weights)
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

    def is_cached(self, texts: Sequence[str]) -> bool:
        """Whether ``features(texts)`` reads the cache without running the backbone."""
        return (self.cache_dir / f"{self.cache_key(list(texts))}.safetensors").is_file()

    def features(self, texts: Sequence[str], progress: bool = False, description: str = "features") -> LayerFeatures:
        """Features of all layers for ``texts`` (scored as the runtime scores them), from the cache when present."""
        texts = list(texts)
        path = self.cache_dir / f"{self.cache_key(texts)}.safetensors"
        if path.is_file():
            return _read(path)
        chunks_dir = path.with_suffix(f".chunks-{self.chunk_size}")  # another chunk size starts afresh
        chunks = [(texts[start:start + self.chunk_size], _chunk_path(chunks_dir, start, self.chunk_size))
                  for start in range(0, len(texts), self.chunk_size)]
        parts = []
        with tqdm(total=len(texts), initial=sum(len(chunk) for chunk, stored in chunks if stored.is_file()),
                  desc=description, unit="text", disable=not progress, leave=False) as bar:
            for chunk, stored in chunks:
                if stored.is_file():  # written by a run that stopped; checked, since a stale file would shift rows
                    parts.append(_read_chunk(stored, len(chunk), chunks_dir))
                    continue
                parts.append(self._extract(chunk))
                _write_atomically(parts[-1], stored)
                bar.update(len(chunk))
        layer_features = {layer: np.concatenate([part[layer] for part in parts]) for layer in parts[0]} if parts else \
            self._extract([])
        _write_atomically(layer_features, path)
        for _, stored in chunks:
            stored.unlink(missing_ok=True)
        if chunks_dir.is_dir():
            chunks_dir.rmdir()
        return layer_features

    def _extract(self, texts: list[str]) -> LayerFeatures:
        backbone = self.backbone
        wanted = {(self.pooling, layer) for layer in range(backbone.num_layers)}
        encoded = backbone.encode([clean_text(text) for text in texts], self.max_length)
        lengths = [len(item.ids) for item in encoded]
        out = {layer: np.zeros((len(texts), backbone.hidden_size), dtype=np.float32) for layer in range(backbone.num_layers)}
        for batch in plan_batches(lengths, self.max_tokens, self.max_texts, MAX_PADDING):
            pooled = backbone.pooled_states([encoded[i].ids for i in batch], wanted)
            rows = np.asarray(batch)
            for (_, layer), values in pooled.items():
                out[layer][rows] = values.float().cpu().numpy()
        return out


def _chunk_path(chunks_dir: Path, start: int, chunk_size: int) -> Path:
    return chunks_dir / f"{start // chunk_size:05d}.safetensors"


def _read_chunk(path: Path, expected_rows: int, chunks_dir: Path) -> LayerFeatures:
    part = _read(path)
    rows = {len(array) for array in part.values()}
    if rows != {expected_rows}:
        raise ArtifactError(f"{path}: {sorted(rows)} rows where {expected_rows} were expected; "
                            f"delete {chunks_dir} to extract again")
    return part


def _read(path: Path) -> LayerFeatures:
    return {int(name.removeprefix("layer")): array for name, array in load_file(str(path)).items()}


def _write_atomically(features: LayerFeatures, path: Path) -> None:
    # Written aside and renamed: an interrupted run never leaves a truncated cache entry.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({f"layer{layer}": np.ascontiguousarray(array) for layer, array in features.items()}, str(partial))
    partial.replace(path)
