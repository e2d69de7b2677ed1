from typing import ClassVar

from .base import BackboneAdapter


class Qwen3Adapter(BackboneAdapter):
    """Qwen3 0.6B-8B; Qwen2 and Qwen2.5 share the block layout and load here too."""

    name: ClassVar[str] = "qwen3"
    description: ClassVar[str] = "Qwen3 0.6B-8B decoders; also Qwen2/Qwen2.5 (same block layout)"
    model_types = frozenset({"qwen3", "qwen2"})
    block_paths = ("layers",)
