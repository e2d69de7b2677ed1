"""Pooled features of the texts rankers read, looked up by text, from the feature cache ``train`` fills.

The feature cache is keyed by a whole list of texts. A split's records are what ``train`` and
``evaluate`` already extracted (``record.scored_text`` of every record, in file order), so those lists
are asked for first, exactly as they were cached; only the texts they lack (a prompt on its own, a
prompt with an added refusal) are extracted, as one more list, itself cached for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..data.records import SafetyRecord
from ..training.feature_cache import FeatureExtractor
from .groups import RankingGroup


@dataclass(frozen=True)
class FeatureTable:
    """One row per distinct text; each kept layer's pooled states."""

    rows: dict[str, int]
    layers: dict[int, np.ndarray]

    def layer_rows(self, texts: Sequence[str]) -> dict[int, np.ndarray]:
        index = [self.rows[text] for text in texts]
        return {layer: values[index] for layer, values in self.layers.items()}

    def vectors(self, texts: Sequence[str], layers: Sequence[int]) -> np.ndarray:
        """Each text's kept layers, concatenated in the order of ``layers``."""
        index = [self.rows[text] for text in texts]
        return np.concatenate([self.layers[layer][index] for layer in layers], axis=1).astype(np.float32)


def group_texts(groups: Iterable[RankingGroup]) -> list[str]:
    """Every text a ranker reads for ``groups``: the prompts alone and each prompt-candidate pair."""
    texts: dict[str, None] = {}
    for group in groups:
        texts[group.prompt] = None
        for candidate in group.candidates:
            texts[candidate.pair_text] = None
    return list(texts)


def feature_table(extractor: FeatureExtractor, splits: Sequence[Sequence[SafetyRecord]], wanted: Iterable[str],
                  layers: Sequence[int] | None = None, progress: bool = False) -> FeatureTable:
    """Rows for every ``wanted`` text, read from the cached extractions of the ``splits`` where they hold it."""
    wanted = list(dict.fromkeys(wanted))
    rows: dict[str, int] = {}
    parts: list[dict[int, np.ndarray]] = []
    offset = 0

    def take(texts: list[str], description: str) -> None:
        nonlocal offset
        features = extractor.features(texts, progress, description=description)
        kept = [index for index, text in enumerate(texts) if text in needed and text not in rows]
        for position, index in enumerate(kept):
            rows[texts[index]] = offset + position
        parts.append({layer: features[layer][kept] for layer in (layers if layers is not None else sorted(features))})
        offset += len(kept)

    needed = set(wanted)
    for number, records in enumerate(splits):
        texts = [record.scored_text for record in records]
        if needed & set(texts):
            take(texts, f"split {number + 1} features")
    missing = sorted(needed - set(rows))
    if missing:
        take(missing, "ranking texts")
    kept_layers = parts[0].keys() if parts else ()
    return FeatureTable(rows, {layer: np.concatenate([part[layer] for part in parts]) for layer in kept_layers})
