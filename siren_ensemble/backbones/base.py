"""What a backbone adapter knows: how to load an architecture and where its blocks and MLPs live.

Adapters are registered by class through the ``register_backbones`` hook. Everything that
depends on the architecture lives here, so heads and the forward pass stay generic.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import gguf_cache
from ..errors import ArtifactError, ConfigError
from ..precision import INT8, check_int8_device, quantize_linear_layers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The dtype the weights load in, per member dtype: int8 loads float32 and quantises the linear layers after.
LOAD_DTYPES = {**DTYPES, "int8": torch.float32}
#: Weight files that are pickles: loading one can run code, so a directory holding only these is refused.
PICKLED_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that identifies one loaded backbone; members with equal specs share it."""

    adapter: str
    #: A hub id or a directory; for GGUF weights, how the config named them (for messages).
    model: str
    gguf_file: str | None = None
    #: Local GGUF file(s), concatenated in order; these weights load through the converted cache.
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
    def is_gguf(self) -> bool:
        return self.gguf_parts is not None or self.gguf_file is not None

    def describe(self) -> str:
        where = f"{self.model}" + (f" ({self.gguf_file})" if self.gguf_file else "")
        return where + (f"@{self.revision}" if self.revision else "")


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

    # ---- loading -------------------------------------------------------------------------

    @functools.cached_property
    def _location(self) -> tuple[str, dict[str, Any]]:
        """Where from_pretrained reads the weights, and the keyword arguments that say which."""
        kwargs: dict[str, Any] = {"trust_remote_code": self.spec.trust_remote_code}
        if self.spec.is_gguf:
            # GGUF loads from its converted safetensors copy (made on first use, sha256-checked).
            return str(gguf_cache.converted(self._gguf_source())), kwargs
        if self.spec.revision:
            kwargs["revision"] = self.spec.revision
        if Path(self.spec.model).is_dir():
            refuse_pickled_weights(Path(self.spec.model))
        return self.spec.model, kwargs

    def _gguf_source(self) -> gguf_cache.GGUFSource:
        parts = self.spec.gguf_parts
        if parts is None:
            parts = (_download_gguf(self.spec),)
        return gguf_cache.GGUFSource(tuple(Path(part) for part in parts), self.spec.sha256, self.spec.describe())

    def _from_pretrained(self, what: str, loader, kwargs: dict[str, Any] | None = None):
        def load():
            where, location_kwargs = self._location
            return loader.from_pretrained(where, **(location_kwargs if kwargs is None else kwargs))

        return _wrap_load_errors(self.spec, what, load)

    def load_config(self):
        from transformers import AutoConfig

        config = self._from_pretrained("config", AutoConfig)
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

    def model_load_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {**self._location[1], "dtype": self.spec.torch_dtype}
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

    def load_model(self) -> nn.Module:
        from transformers import AutoModel

        model = self._from_pretrained("weights", AutoModel, self.model_load_kwargs())
        self.check_model_type(model.config)
        model = model.eval().requires_grad_(False)
        if self.spec.dtype == INT8:
            check_int8_device(self.spec.device)
            model = quantize_linear_layers(model)
        return model

    def load_language_model(self) -> nn.Module:
        """The same weights with their LM head (``AutoModelForCausalLM``), to generate text (steering); scoring never
        loads it. A GGUF's converted copy is a base model: its LM head comes from the GGUF's own output tensor, or
        is the tied token embeddings when the GGUF has none."""
        from transformers import AutoModelForCausalLM

        if self.spec.dtype == INT8:
            raise ConfigError(f"{self.spec.describe()}: int8 is for scoring; generate in float32 or bfloat16")
        model, loading = self._from_pretrained("weights with the LM head", AutoModelForCausalLM,
                                               {**self.model_load_kwargs(), "output_loading_info": True})
        self.check_model_type(model.config)
        missing = sorted(loading["missing_keys"])
        head = model.get_output_embeddings()
        if missing and self.spec.is_gguf and head is not None:
            weight = gguf_cache.output_weights(self._gguf_source())
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

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        tokenizer = self._from_pretrained("tokenizer", AutoTokenizer)
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


def refuse_pickled_weights(directory: Path) -> None:
    """A directory whose weights are only pickles (``pytorch_model.bin``) is refused, naming the file."""
    if any(directory.glob("*.safetensors")):
        return  # from_pretrained(use_safetensors=True) reads these and ignores any pickle beside them
    pickled = sorted(path for pattern in PICKLED_WEIGHT_PATTERNS for path in directory.glob(pattern))
    if pickled:
        raise ArtifactError(
            f"{pickled[0]}: pickled weights are refused (loading a pickle can run code); save the model with "
            f"safetensors (save_pretrained(safe_serialization=True)) and remove the pickle"
        )


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


@contextlib.contextmanager
def quiet_transformers():
    """Hide load reports (e.g. the unused LM head) and progress bars while loading; restore after.

    The GGUF de-quantisation bar (plain tqdm inside transformers) stays on a terminal, where a
    minute-long conversion deserves one, and goes quiet when stderr is a file or a pipe.
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gguf_bar = functools.partial(tqdm, disable=not sys.stderr.isatty(), leave=False)
    try:
        with mock.patch.object(gguf_utils, "tqdm", gguf_bar):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_enabled:
            hf_logging.enable_progress_bar()


def _download_gguf(spec: BackboneSpec) -> str:
    """A GGUF file inside a hub repository (``model`` + ``gguf_file``), downloaded into the hub cache."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(spec.model, spec.gguf_file, revision=spec.revision)
    except Exception as error:  # the hub client raises many types; all mean "could not fetch"
        raise ArtifactError(f"cannot fetch {spec.describe()} from the Hugging Face hub ({type(error).__name__})") from None


def _wrap_load_errors(spec: BackboneSpec, what: str, load):
    try:
        with quiet_transformers():
            return load()
    except (OSError, ValueError, KeyError) as error:
        # transformers reports unreachable hubs, missing files and bad GGUFs this way.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ArtifactError(f"cannot load the {what} of {spec.describe()}: {first_line}") from None
