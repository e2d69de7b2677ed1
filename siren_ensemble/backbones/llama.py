from typing import ClassVar

from .base import BackboneAdapter


class Llama3Adapter(BackboneAdapter):
    """Llama-architecture decoders: Llama 3.x, SmolLM2 and any other ``llama`` model_type."""

    name: ClassVar[str] = "llama3"
    description: ClassVar[str] = "Llama-architecture decoders (Llama 3.x, SmolLM2, model_type llama)"
    model_types = frozenset({"llama"})
    block_paths = ("layers",)
