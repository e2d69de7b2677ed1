"""A complete third-party backbone plugin: GPT-2-style decoders (blocks in ``h``, MLP in ``block.mlp``).

Install it next to siren-ensemble (``pip install ./plugins/siren-ensemble-gpt2``) and use
``backbone: gpt2`` in a member of the ensemble config.
"""

from siren_ensemble.backbones import BackboneAdapter
from siren_ensemble.hookspecs import hookimpl


class GPT2Adapter(BackboneAdapter):
    name = "gpt2"
    description = "GPT-2-style decoders (model_type gpt2), from the example plugin"
    model_types = frozenset({"gpt2"})
    # GPT-2 has learned absolute positions: right padding keeps every real token at its own position.
    padding_side = "right"
    block_paths = ("h",)
    mlp_attributes = ("mlp",)


@hookimpl
def register_backbones(register):
    register(GPT2Adapter)
