"""Mean-pooled per-layer features of labelled texts, extracted once and cached on disk (safetensors).

Entries are keyed by everything that changes the numbers: the backbone (adapter, weights: the pinned sha256, else
model, GGUF file and revision; dtype), the pooling and ``max_length`` (the *identity*), and, for a whole list, the
exact texts. Two kinds live under the cache directory:

- Per text: ``by-text/<identity>/<random>.safetensors``, shards of at most ``chunk_size`` texts' rows, each with the
  sha256 of its texts in its header. Extraction runs only on the texts that no shard holds and files them as it goes,
  so adding records to a data build extracts only the new texts, and a stopped run resumes with the texts it had not
  reached. Shards are never changed and are named at random; the index is read from their headers, so processes
  extracting side by side into one store do not clash (at worst a text is stored twice).
- Per list: ``<key>.safetensors``, the rows of one ordered list, written once the list is complete, so identical calls
  (re-runs, sweeps, the leave-one-source-out evaluation) read one file.

An extractor with ``max_layer`` set (a depth-cut head's training or scoring) runs and stores layers 0 to
``max_layer`` only, so a cut backbone's extraction costs what its runtime pass does. Its shards record the cut
(``DEPTH_KEY``); a request is served by any shard holding at least the layers it needs (a full shard serves
every cut, a cut shard only as deep a cut), and a list entry of a cut extractor has its own key.

Entries of the earlier format stay valid: a list entry is read as before, and its rows are filed per text the first
time (so a build that grows from it extracts only its new texts); the ``<key>.chunks-512`` chunks of a stopped run of
the same list are filed per text and removed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from ..backbones.base import BackboneAdapter, BackboneSpec
from ..cache import feature_cache_root
from ..encoding import plan_batches
from ..errors import ArtifactError
from ..extraction import LoadedBackbone
from ..text import clean_text
from ..weights import ResolvedWeights, resolve_weights

logger = logging.getLogger(__name__)

LayerFeatures = dict[int, np.ndarray]
#: Texts per stored shard: a stopped extraction loses at most this many texts' work.
DEFAULT_CHUNK_SIZE = 512
#: A batch closes before padding passes this share of its tokens (padded tokens cost as much as real ones).
MAX_PADDING = 0.25
#: The per-text store's folder under the cache directory, one sub-folder per backbone identity.
TEXT_STORE_DIR = "by-text"
#: Header metadata of a per-text shard: the sha256 of its texts, one per row, newline-separated.
DIGESTS_KEY = "text_sha256"
#: Header metadata of a shard that holds layers 0 to N only (its value: N); absent from a shard of every layer.
DEPTH_KEY = "max_layer"


def texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def text_digest(text: str) -> str:
    """The name of one text's row in the per-text store."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FeatureExtractor:
    """Pooled features of every layer of one backbone; the backbone loads only on a cache miss."""

    def __init__(self, adapter: BackboneAdapter, max_length: int = 512, pooling: str = "residual_mean",
                 max_tokens: int = 8192, max_texts: int = 64, cache_dir: str | Path | None = None,
                 loaded: dict[BackboneSpec, LoadedBackbone] | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 max_layer: int | None = None):
        self.adapter = adapter
        self.max_length = max_length
        self.pooling = pooling
        self.max_tokens = max_tokens
        self.max_texts = max_texts
        self.cache_dir = Path(cache_dir) if cache_dir is not None else feature_cache_root()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.chunk_size = chunk_size
        #: The deepest layer extracted (None: every layer); a depth-cut head needs no deeper one.
        self.max_layer = max_layer
        #: Loaded backbones by spec; extractors given the same dict share them (one load per backbone).
        self.loaded = loaded if loaded is not None else {}
        self._store: TextStore | None = None

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

    def _identity(self) -> dict:
        spec = self.adapter.spec
        # Pinned GGUF weights are named by their sha256, wherever the file lives.
        weights = {"sha256": spec.sha256} if spec.sha256 else {
            "model": spec.model, "gguf_file": spec.gguf_file, "gguf_parts": spec.gguf_parts, "revision": spec.revision,
        }
        return {"adapter": spec.adapter, **weights, "dtype": spec.dtype, "pooling": self.pooling,
                "max_length": self.max_length}

    def identity_key(self) -> str:
        """The key of everything but the texts and the depth: the per-text store's folder, which every cut shares."""
        return _short_hash(self._identity())

    def cache_key(self, texts: Sequence[str]) -> str:
        """The key of one exact list of texts (unchanged from the earlier format, so its entries stay valid); a cut
        extractor's lists hold fewer layers, so the cut is part of their key."""
        depth = {} if self.max_layer is None else {"max_layer": self.max_layer}
        return _short_hash({**self._identity(), **depth, "texts": texts_digest(texts)})

    @property
    def store(self) -> TextStore:
        directory = self.cache_dir / TEXT_STORE_DIR / self.identity_key()
        if self._store is None or self._store.directory != directory:
            self._store = TextStore(directory)
        return self._store

    def is_cached(self, texts: Sequence[str]) -> bool:
        """Whether ``features(texts)`` reads the cache without running the backbone."""
        texts = list(texts)
        if self._list_path(texts).is_file():
            return True
        stored = self.store.index(self.max_layer)
        return bool(texts) and all(text_digest(text) in stored for text in texts)

    def features(self, texts: Sequence[str], progress: bool = False, description: str = "features") -> LayerFeatures:
        """Features of all layers for ``texts`` (scored as the runtime scores them), from the cache when present."""
        texts = list(texts)
        path = self._list_path(texts)
        if path.is_file():
            layer_features = _read_list(path, len(texts))
            self._file_list_rows(texts, layer_features, path)
            return layer_features
        if texts:
            self._file_old_chunks(texts, path)
            layer_features = self._from_store(texts, progress, description)
        else:
            layer_features = self._extract([])
        _write_atomically(layer_features, path)
        return layer_features

    def _list_path(self, texts: Sequence[str]) -> Path:
        return self.cache_dir / f"{self.cache_key(texts)}.safetensors"

    def _from_store(self, texts: list[str], progress: bool, description: str) -> LayerFeatures:
        """Stored texts are read, the others extracted chunk by chunk and stored; duplicates share one row."""
        positions: dict[str, list[int]] = {}
        for position, text in enumerate(texts):
            positions.setdefault(text_digest(text), []).append(position)
        stored = self.store.index(self.max_layer)
        result = _Rows(len(texts), self.max_layer)
        self.store.read_into(result, {digest: stored[digest] for digest in positions if digest in stored}, positions)
        missing = [digest for digest in positions if digest not in stored]
        with tqdm(total=len(positions), initial=len(positions) - len(missing), desc=description, unit="text",
                  disable=not progress, leave=False) as bar:
            for start in range(0, len(missing), self.chunk_size):
                chunk = missing[start:start + self.chunk_size]
                extracted = self._extract([texts[positions[digest][0]] for digest in chunk])
                result.check_layers(self.store.add(chunk, extracted, self._stored_depth()),
                                    [f"layer{layer}" for layer in extracted])
                result.put(extracted, *_scatter(chunk, range(len(chunk)), positions))
                bar.update(len(chunk))
        return result.layers

    def _file_list_rows(self, texts: list[str], layer_features: LayerFeatures, path: Path) -> None:
        """Files a list entry's rows per text, those the store lacks (entries of the earlier format had none)."""
        firsts: dict[str, int] = {}
        for position, text in enumerate(texts):
            firsts.setdefault(text_digest(text), position)
        stored = self.store.index(self.max_layer)
        missing = [digest for digest in firsts if digest not in stored]
        try:
            for start in range(0, len(missing), self.chunk_size):
                chunk = missing[start:start + self.chunk_size]
                rows = [firsts[digest] for digest in chunk]
                self.store.add(chunk, {layer: array[rows] for layer, array in layer_features.items()}, self.max_layer)
        except (OSError, SafetensorError) as error:  # a read-only cache still answers from its list entries
            logger.warning("%s: not filed per text in %s (%s)", path, self.store.directory, error)

    def _file_old_chunks(self, texts: list[str], path: Path) -> None:
        """Files the chunks of a stopped run of the earlier format (``<key>.chunks-512/00003.safetensors``) per text."""
        for chunks_dir in sorted(path.parent.glob(f"{path.stem}.chunks-*")):
            chunk_size = chunks_dir.suffix.removeprefix(".chunks-")
            if not chunk_size.isdigit() or not chunks_dir.is_dir():
                continue
            for stored in sorted(file for file in chunks_dir.glob("*.safetensors") if file.stem.isdigit()):
                start = int(stored.stem) * int(chunk_size)
                chunk = texts[start:start + int(chunk_size)]
                self.store.add([text_digest(text) for text in chunk], _read_chunk(stored, len(chunk), chunks_dir))
                stored.unlink()
            if not any(chunks_dir.iterdir()):
                chunks_dir.rmdir()

    def _stored_depth(self) -> int | None:
        """What a shard this extractor writes holds: None for every layer (a cut at the last one is no cut)."""
        if self.max_layer is None or self.max_layer >= self.backbone.num_layers - 1:
            return None
        return self.max_layer

    def _extract(self, texts: list[str]) -> LayerFeatures:
        backbone = self.backbone
        depth = backbone.num_layers if self.max_layer is None else min(self.max_layer + 1, backbone.num_layers)
        wanted = {(self.pooling, layer) for layer in range(depth)}
        encoded = backbone.encode([clean_text(text) for text in texts], self.max_length)
        lengths = [len(item.ids) for item in encoded]
        out = {layer: np.zeros((len(texts), backbone.hidden_size), dtype=np.float32) for layer in range(depth)}
        for batch in plan_batches(lengths, self.max_tokens, self.max_texts, MAX_PADDING):
            pooled = backbone.pooled_states([encoded[i].ids for i in batch], wanted)
            rows = np.asarray(batch)
            for (_, layer), values in pooled.items():
                out[layer][rows] = values.float().cpu().numpy()
        return out


class TextStore:
    """Rows of single texts for one backbone identity, in shards that are written once and never changed."""

    def __init__(self, directory: Path):
        self.directory = directory
        # The shards whose headers were read (they never change): their texts' digests and depth (None: every layer).
        self._digests: dict[Path, tuple[list[str], int | None]] = {}

    def index(self, max_layer: int | None = None) -> dict[str, tuple[Path, int]]:
        """Where each stored text's row is (shard, row), over the shards on disk now, whoever wrote them, that hold
        layers 0 to ``max_layer`` (None: every layer). A full shard is preferred to a cut one."""
        shards = sorted(self.directory.glob("*.safetensors")) if self.directory.is_dir() else []
        known: dict[Path, tuple[list[str], int | None]] = {}
        for path in shards:
            header = self._digests.get(path)
            if header is None:
                header = _shard_header(path)
            if header is not None:
                known[path] = header
        self._digests = known
        rows: dict[str, tuple[Path, int]] = {}
        for path, (digests, depth) in sorted(known.items(), key=lambda item: item[1][1] is not None):
            if depth is None or (max_layer is not None and depth >= max_layer):
                for row, digest in enumerate(digests):
                    rows.setdefault(digest, (path, row))
        return rows

    def add(self, digests: list[str], layer_features: LayerFeatures, max_layer: int | None = None) -> Path:
        """Stores the rows of the texts named by ``digests``, in order, as a new shard (of layers 0 to ``max_layer``
        when the extraction was cut there)."""
        path = self.directory / f"{uuid.uuid4().hex}.safetensors"
        metadata = {DIGESTS_KEY: "\n".join(digests)}
        if max_layer is not None:
            metadata[DEPTH_KEY] = str(max_layer)
        _write_atomically(layer_features, path, metadata)
        self._digests[path] = (list(digests), max_layer)
        return path

    def read_into(self, result: _Rows, locations: Mapping[str, tuple[Path, int]],
                  positions: Mapping[str, list[int]]) -> None:
        """Copies the stored rows into ``result``, holding one layer of one shard in memory at a time."""
        by_shard: dict[Path, list[str]] = {}
        for digest, (path, _) in locations.items():
            by_shard.setdefault(path, []).append(digest)
        for path, digests in by_shard.items():
            with safe_open(str(path), framework="np") as shard:
                names = result.check_layers(path, shard.keys())
                targets, rows = _scatter(digests, [locations[digest][1] for digest in digests], positions)
                for name in names:
                    result.put({_layer(name): shard.get_tensor(name)}, targets, rows)


class _Rows:
    """The features of ``size`` texts, filled part by part; each layer is allocated when its first part comes.

    With ``max_layer`` set, the layers 0 to ``max_layer`` of each part are kept (a part may hold deeper ones);
    without it, every part must hold the same layers."""

    def __init__(self, size: int, max_layer: int | None = None):
        self.size = size
        self.max_layer = max_layer
        self.layers: LayerFeatures = {}
        self._first: tuple[Path, list[str]] | None = None  # the first part's shard and layer names

    def check_layers(self, path: Path, names: Sequence[str]) -> list[str]:
        """The names of ``path``'s layers to keep; an ArtifactError when it lacks one."""
        names = sorted(names, key=_layer)
        if self.max_layer is not None:
            kept = [name for name in names if _layer(name) <= self.max_layer]
            if [_layer(name) for name in kept] != list(range(self.max_layer + 1)):
                raise ArtifactError(f"{path}: layers {names} lack some of layers 0-{self.max_layer}; "
                                    "delete it to extract its texts again")
            return kept
        if self._first is None:
            self._first = (path, names)
        elif names != self._first[1]:
            raise ArtifactError(f"{path}: layers {names} where {self._first[0]} holds {self._first[1]}; "
                                "delete the wrong one to extract its texts again")
        return names

    def put(self, part: LayerFeatures, targets: np.ndarray, rows: np.ndarray) -> None:
        """Row ``rows[i]`` of each of ``part``'s layers goes to position ``targets[i]``."""
        for layer, values in part.items():
            if layer not in self.layers:
                self.layers[layer] = np.empty((self.size, values.shape[1]), dtype=np.float32)
            self.layers[layer][targets] = values[rows]


def _scatter(digests: Sequence[str], rows: Sequence[int],
             positions: Mapping[str, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(targets, rows): every position of each text, beside the row that holds it."""
    pairs = [(position, row) for digest, row in zip(digests, rows) for position in positions[digest]]
    return np.asarray([p for p, _ in pairs], dtype=np.int64), np.asarray([r for _, r in pairs], dtype=np.int64)


def _shard_header(path: Path) -> tuple[list[str], int | None] | None:
    """A shard's text digests, checked against its rows, and its depth (None: every layer); None when it is gone
    (deleted since it was listed)."""
    try:
        with safe_open(str(path), framework="np") as shard:
            metadata = shard.metadata() or {}
            listed, depth = metadata.get(DIGESTS_KEY), metadata.get(DEPTH_KEY)
            rows = {shard.get_slice(name).get_shape()[0] for name in shard.keys()}
    except FileNotFoundError:
        return None
    except (SafetensorError, OSError) as error:
        raise ArtifactError(f"{path}: unreadable ({error}); delete it to extract its texts again") from error
    digests = listed.split("\n") if listed else []
    if not digests or rows != {len(digests)}:
        raise ArtifactError(f"{path}: {len(digests)} text digests but {sorted(rows)} rows; "
                            "delete it to extract its texts again")
    if depth is not None and not depth.isdigit():
        raise ArtifactError(f"{path}: {DEPTH_KEY} {depth!r} is not a layer number; delete it to extract its texts again")
    return digests, None if depth is None else int(depth)


def _read_chunk(path: Path, expected_rows: int, chunks_dir: Path) -> LayerFeatures:
    part = _read(path)
    rows = {len(array) for array in part.values()}
    if rows != {expected_rows}:
        raise ArtifactError(f"{path}: {sorted(rows)} rows where {expected_rows} were expected; "
                            f"delete {chunks_dir} to extract again")
    return part


def _read_list(path: Path, expected_rows: int) -> LayerFeatures:
    layer_features = _read(path)
    rows = {len(array) for array in layer_features.values()}
    if expected_rows and rows != {expected_rows}:
        raise ArtifactError(f"{path}: {sorted(rows)} rows for {expected_rows} texts; delete it to extract again")
    return layer_features


def _read(path: Path) -> LayerFeatures:
    return {_layer(name): array for name, array in load_file(str(path)).items()}


def _layer(name: str) -> int:
    return int(name.removeprefix("layer"))


def _short_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def _write_atomically(features: LayerFeatures, path: Path, metadata: dict[str, str] | None = None) -> None:
    # Written aside under a name of its own and renamed: an interrupted run never leaves a truncated cache entry,
    # and two processes writing the same entry do not write into one file.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.partial")
    arrays = {f"layer{layer}": np.ascontiguousarray(array) for layer, array in features.items()}
    save_file(arrays, str(partial), metadata)
    partial.replace(path)
