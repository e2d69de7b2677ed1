from .base import DTYPES, BackboneAdapter, BackboneSpec
from .hf import HFAdapter
from .llama import Llama3Adapter
from .qwen import Qwen3Adapter

__all__ = ["DTYPES", "BackboneAdapter", "BackboneSpec", "HFAdapter", "Llama3Adapter", "Qwen3Adapter"]
