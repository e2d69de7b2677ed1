"""Ranking groups as padded tensors: the prompt's features, each candidate's, which are real, which preferred."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .features import FeatureTable
from .groups import RankingGroup


@dataclass(frozen=True)
class GroupBatch:
    prompts: torch.Tensor  # (groups, input_dim)
    candidates: torch.Tensor  # (groups, most candidates, input_dim)
    mask: torch.Tensor  # (groups, most candidates): a real candidate, not padding
    preferred: torch.Tensor  # (groups, most candidates), 0/1
    harmful_request: torch.Tensor  # (groups,)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: torch.Tensor) -> "GroupBatch":
        return GroupBatch(self.prompts[index], self.candidates[index], self.mask[index], self.preferred[index],
                          self.harmful_request[index])


def group_batch(groups: Sequence[RankingGroup], table: FeatureTable, layers: Sequence[int]) -> GroupBatch:
    width = max(len(group.candidates) for group in groups)
    prompts = torch.from_numpy(table.vectors([group.prompt for group in groups], layers))
    candidates = torch.zeros((len(groups), width, prompts.shape[1]))
    mask = torch.zeros((len(groups), width), dtype=torch.bool)
    preferred = torch.zeros((len(groups), width))
    for row, group in enumerate(groups):
        count = len(group.candidates)
        candidates[row, :count] = torch.from_numpy(table.vectors([c.pair_text for c in group.candidates], layers))
        mask[row, :count] = True
        preferred[row, :count] = torch.tensor([float(c.preferred) for c in group.candidates])
    harmful = torch.tensor([group.harmful_request for group in groups])
    return GroupBatch(prompts, candidates, mask, preferred, harmful)


def real_rows(batch: GroupBatch) -> np.ndarray:
    """Every prompt's and real candidate's features, one row each (for the standardisation)."""
    return torch.cat([batch.prompts, batch.candidates[batch.mask]]).numpy()
