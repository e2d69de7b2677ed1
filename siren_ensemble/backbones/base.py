"""What a backbone adapter knows: how to load an architecture and where its blocks and MLPs live.

Adapters are registered by class through the ``register_backbones`` hook. Everything that
depends on the architecture lives here, so heads and the forward pass stay generic.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ArtifactError, ConfigError
from ..precision import INT8, check_int8_device, quantize_linear_layers
from ..quiet_loading import quiet_transformers
from ..weights import ResolvedWeights, WeightReference, gguf_output_weights

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The dtype the weights load in, per member dtype: int8 loads float32 and quantises the linear layers after.
LOAD_DTYPES = {**DTYPES, "int8": torch.float32}


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that identifies one loaded backbone; members with equal specs share it."""

    adapter: str
    # The weights, as settled by siren_ensemble.weights (the fields of a WeightReference).
    model: str
    gguf_file: str | None = None
    gguf_parts: tuple[str, ...] | None = None
    sha256: str | None = None
    revision: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    device_map: tuple[tuple[str, Any], ...] | None = None
    max_memory: tuple[tuple[Any, Any], ...] | None = None
    trust_remote_code: bool = False
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype the weights load in (float32 for int8, whose linear layers are quantised after loading)."""
        return LOAD_DTYPES[self.dtype]

    @property
    def weights(self) -> WeightReference:
        return WeightReference(self.model, self.gguf_file, self.gguf_parts, self.sha256, self.revision)

    def describe(self) -> str:
        return self.weights.describe()


class BackboneAdapter:
    """Base adapter for ``transformers`` models loaded with ``AutoModel`` (never the LM head)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: ``config.model_type`` values this adapter accepts; ``None`` accepts any.
    model_types: ClassVar[frozenset[str] | None] = None
    padding_side: ClassVar[str] = "right"
    #: Paths tried, in order, to find the ModuleList of transformer blocks.
    block_paths: ClassVar[tuple[str, ...]] = ("layers", "model.layers")
    mlp_attributes: ClassVar[tuple[str, ...]] = ("mlp",)

    def __init__(self, spec: BackboneSpec):
        self.spec = spec

    # ---- loading: ``weights`` is already resolved and verified (siren_ensemble.weights.resolve) ----------

    def _from_pretrained(self, what: str, loader, weights: ResolvedWeights, kwargs: dict[str, Any] | None = None):
        kwargs = self.location_kwargs(weights) if kwargs is None else kwargs
        return _wrap_load_errors(self.spec, what, lambda: loader.from_pretrained(weights.location, **kwargs))

    def location_kwargs(self, weights: ResolvedWeights) -> dict[str, Any]:
        """The from_pretrained arguments every load shares: which version to read, and whether to run its code."""
        return {"trust_remote_code": self.spec.trust_remote_code, **weights.from_pretrained_kwargs()}

    def load_config(self, weights: ResolvedWeights):
        from transformers import AutoConfig

        config = self._from_pretrained("config", AutoConfig, weights)
        self.check_model_type(config)
        return config

    def check_model_type(self, config) -> None:
        model_type = getattr(config, "model_type", None)
        if self.model_types is not None and model_type not in self.model_types:
            accepted = ", ".join(sorted(self.model_types))
            raise ConfigError(
                f"backbone {self.name!r} reads model_type {accepted}, but {self.spec.describe()} is "
                f"{model_type!r}; use a backbone made for it, or 'hf' for any transformers model"
            )

    @staticmethod
    def num_layers(config) -> int:
        return int(config.get_text_config().num_hidden_layers)

    @staticmethod
    def hidden_size(config) -> int:
        return int(config.get_text_config().hidden_size)

    def model_load_kwargs(self, weights: ResolvedWeights) -> dict[str, Any]:
        kwargs: dict[str, Any] = {**self.location_kwargs(weights), "dtype": self.spec.torch_dtype}
        kwargs.update(dict(self.spec.options))
        # Never a pickle, from a directory or the hub (GGUF weights load from their converted safetensors copy).
        kwargs["use_safetensors"] = True
        kwargs["device_map"] = self._device_map()
        if self.spec.max_memory:
            kwargs["max_memory"] = dict(self.spec.max_memory)
        return kwargs

    def _device_map(self):
        # Placement goes through accelerate (transformers hands device_map to it).
        if self.spec.device_map:
            return dict(self.spec.device_map)
        if self.spec.device == "auto":
            return "auto"
        check_device_available(self.spec.device)
        return {"": self.spec.device}

    def load_model(self, weights: ResolvedWeights) -> nn.Module:
        from transformers import AutoModel

        model = self._from_pretrained("weights", AutoModel, weights, self.model_load_kwargs(weights))
        self.check_model_type(model.config)
        model = model.eval().requires_grad_(False)
        if self.spec.dtype == INT8:
            check_int8_device(self.spec.device)
            model = quantize_linear_layers(model)
        return model

    def load_language_model(self, weights: ResolvedWeights) -> nn.Module:
        """The same weights with their LM head (``AutoModelForCausalLM``), to generate text (steering); scoring never
        loads it. A GGUF's converted copy is a base model: its LM head comes from the GGUF's own output tensor, or
        is the tied token embeddings when the GGUF has none."""
        from transformers import AutoModelForCausalLM

        if self.spec.dtype == INT8:
            raise ConfigError(f"{self.spec.describe()}: int8 is for scoring; generate in float32 or bfloat16")
        model, loading = self._from_pretrained("weights with the LM head", AutoModelForCausalLM, weights,
                                               {**self.model_load_kwargs(weights), "output_loading_info": True})
        self.check_model_type(model.config)
        missing = sorted(loading["missing_keys"])
        head = model.get_output_embeddings()
        if missing and weights.gguf is not None and head is not None:
            weight = gguf_output_weights(weights)
            if weight is not None and tuple(weight.shape) != tuple(head.weight.shape):
                raise ArtifactError(f"{self.spec.describe()}: the GGUF's output tensor has shape {tuple(weight.shape)}, "
                                    f"the model's LM head {tuple(head.weight.shape)}")
            if weight is not None:
                device = model.get_input_embeddings().weight.device  # a missing weight may sit on the meta device
                head.weight = nn.Parameter(weight.to(device=device, dtype=self.spec.torch_dtype), requires_grad=False)
                missing = [key for key in missing if key != _parameter_name(model, head)]
        if missing:
            raise ArtifactError(f"cannot load the LM head of {self.spec.describe()}: {', '.join(missing)} missing "
                                "from its weights (and not tied to the embeddings)")
        return model.eval().requires_grad_(False)

    def load_tokenizer(self, weights: ResolvedWeights):
        from transformers import AutoTokenizer

        tokenizer = self._from_pretrained("tokenizer", AutoTokenizer, weights)
        tokenizer.padding_side = self.padding_side
        if tokenizer.pad_token is None:
            # Same fallback as llm-siren; padded positions are masked out of every mean anyway.
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.pad_token is None:
            raise ArtifactError(f"tokenizer of {self.spec.describe()} has neither a pad nor an eos token")
        return tokenizer

    # ---- architecture conventions --------------------------------------------------------

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        for path in self.block_paths:
            found = _get_path(model, path)
            if isinstance(found, nn.ModuleList) and len(found) == self.num_layers(model.config):
                return found
        raise ArtifactError(
            f"backbone {self.name!r}: no transformer blocks at {', '.join(self.block_paths)} in "
            f"{type(model).__name__}; this architecture needs its own adapter plugin"
        )

    def mlp(self, block: nn.Module) -> nn.Module:
        for attribute in self.mlp_attributes:
            module = getattr(block, attribute, None)
            if isinstance(module, nn.Module):
                return module
        raise ArtifactError(
            f"backbone {self.name!r}: mlp_mean pooling needs the MLP of each block, but "
            f"{type(block).__name__} has none of {', '.join(self.mlp_attributes)}"
        )

    @staticmethod
    def forward_kwargs(model: nn.Module) -> dict[str, Any]:
        """Keyword arguments for the forward call: a decoder's KV cache is never needed for scoring."""
        accepts_cache = "use_cache" in inspect.signature(model.forward).parameters
        return {"use_cache": False} if accepts_cache else {}


def _parameter_name(model: nn.Module, head: nn.Module) -> str:
    """The state-dict name of ``head``'s weight in ``model`` (``lm_head.weight``)."""
    return next(f"{name}.weight" for name, module in model.named_modules() if module is head)


def check_device_available(device: str) -> None:
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count()
        wanted = int(index or 0)
        if wanted >= count:
            raise ConfigError(f"device {device!r} requested but this machine has {count} CUDA device(s)")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available")


def _get_path(root: nn.Module, dotted: str):
    current: Any = root
    for part in dotted.split("."):
        current = getattr(current, part, None)
        if current is None:
            return None
    return current


def _wrap_load_errors(spec: BackboneSpec, what: str, load):
    try:
        with quiet_transformers():
            return load()
    except (OSError, ValueError, KeyError) as error:
        # transformers reports unreachable hubs, missing files and bad GGUFs this way.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ArtifactError(f"cannot load the {what} of {spec.describe()}: {first_line}") from None
    except TypeError as error:
        # An argument the model class does not take, passed on from backbone_options.
        raise ConfigError(f"cannot load the {what} of {spec.describe()}: {error} (check the member's backbone_options)") from None
