"""Depth-budget heads: the deepest layer stage 1 may probe, from ``--max-layer`` or ``--depth-budget``.

A head lists only the layers it reads, and the runtime's forward pass stops right after the
deepest of them (``LoadedBackbone.run_hooked``), so a head cut at layer K never computes the
blocks above K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError

# depth_budget * num_layers is compared after this slack, so 0.1 * 30 counts as 3 blocks, not 4.
_BUDGET_SLACK = 1e-9


@dataclass(frozen=True)
class DepthCut:
    """Stage 1 probes layers ``0 .. max_layer`` of a backbone of ``num_layers`` blocks."""

    max_layer: int
    num_layers: int
    #: How the cut was asked for, for messages and the report (``--max-layer 17``, ``--depth-budget 0.6``).
    requested: str

    @property
    def blocks_run(self) -> int:
        return self.max_layer + 1

    @property
    def share_of_depth(self) -> float:
        return self.blocks_run / self.num_layers

    @property
    def is_full_depth(self) -> bool:
        return self.max_layer == self.num_layers - 1

    def to_dict(self) -> dict:
        return {"max_layer": self.max_layer, "num_layers": self.num_layers, "blocks_run": self.blocks_run,
                "share_of_depth": round(self.share_of_depth, 6), "requested": self.requested}


def check_depth_request(max_layer: int | None, depth_budget: float | None) -> None:
    """What can be checked before the backbone's depth is known (so a bad flag fails before extraction)."""
    if max_layer is not None and depth_budget is not None:
        raise InputError("--max-layer and --depth-budget both set the deepest layer; give one of them")
    if max_layer is not None and max_layer < 0:
        raise InputError(f"--max-layer: expected a layer index of 0 or more, got {max_layer}")
    if depth_budget is not None and not 0.0 < depth_budget <= 1.0:
        raise InputError(f"--depth-budget: expected a share of the backbone's depth in (0, 1], got {depth_budget}")


def resolve_depth_cut(num_layers: int, max_layer: int | None = None, depth_budget: float | None = None) -> DepthCut:
    """The cut for a backbone of ``num_layers`` blocks; a budget F keeps the first ceil(F * num_layers) blocks."""
    check_depth_request(max_layer, depth_budget)
    if max_layer is not None:
        if max_layer >= num_layers:
            raise InputError(f"--max-layer: layer {max_layer} is outside 0-{num_layers - 1} "
                             f"(the backbone has {num_layers} blocks)")
        return DepthCut(max_layer, num_layers, f"--max-layer {max_layer}")
    if depth_budget is not None:
        blocks = max(1, math.ceil(depth_budget * num_layers - _BUDGET_SLACK))
        return DepthCut(blocks - 1, num_layers, f"--depth-budget {depth_budget:g}")
    return DepthCut(num_layers - 1, num_layers, "full depth")


def select_layers(layers: Sequence[int] | None, cut: DepthCut) -> list[int]:
    """``--layers`` (default: all) within the backbone and the cut; a layer beyond either is an error, not dropped."""
    if layers is None:
        return list(range(cut.blocks_run))
    outside = [layer for layer in layers if not 0 <= layer < cut.num_layers]
    if outside:
        raise InputError(f"--layers: layer {outside[0]} is outside 0-{cut.num_layers - 1} "
                         f"(the backbone has {cut.num_layers} blocks)")
    above = [layer for layer in layers if layer > cut.max_layer]
    if above:
        raise InputError(f"--layers: layer {above[0]} is above the depth cut ({cut.requested}: layers 0-{cut.max_layer})")
    return sorted(set(layers))
