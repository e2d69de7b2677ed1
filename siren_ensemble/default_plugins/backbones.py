from ..backbones import HFAdapter, Llama3Adapter, Qwen3Adapter
from ..hookspecs import hookimpl


@hookimpl
def register_backbones(register):
    register(Llama3Adapter, aliases=("llama",))
    register(Qwen3Adapter, aliases=("qwen", "qwen2"))
    register(HFAdapter, aliases=("transformers",))
