from typing import ClassVar

from torch import nn

from ..errors import ArtifactError
from .base import BackboneAdapter


class HFAdapter(BackboneAdapter):
    """Any other ``transformers`` model that exposes its blocks as one ModuleList (decoder or encoder)."""

    name: ClassVar[str] = "hf"
    description: ClassVar[str] = "any transformers model with hidden states (decoder or encoder)"
    model_types = None
    block_paths = (
        "layers", "model.layers", "h", "transformer.h", "decoder.layers",
        "encoder.layer", "encoder.layers", "blocks", "language_model.layers",
    )
    mlp_attributes = ("mlp", "feed_forward", "ffn")

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        try:
            return super().blocks(model)
        except ArtifactError:
            pass
        # Unknown layout: accept the one ModuleList whose length is the model's depth.
        depth = self.num_layers(model.config)
        candidates = [
            module for module in model.modules() if isinstance(module, nn.ModuleList) and len(module) == depth
        ]
        if len(candidates) == 1:
            return candidates[0]
        raise ArtifactError(
            f"backbone 'hf': cannot tell which ModuleList of {type(model).__name__} holds its {depth} blocks "
            f"({len(candidates)} candidates); write an adapter plugin for this architecture"
        )
