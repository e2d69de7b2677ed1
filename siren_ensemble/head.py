"""The SIREN head: the ``llm-siren`` artifact (``siren_config.json`` + ``siren.safetensors``).

Layer ``l`` means the output of transformer block ``l`` (0-based), i.e. ``hidden_states[l + 1]``
in transformers' convention, exactly as ``siren_guard.SirenGuard`` indexes it. Transformers
applies the model's final norm to the *last* entry of ``hidden_states``, so a head that selects
the last block reads the normed state and every other layer reads the raw residual stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, NonNegativeInt
from torch import nn

from . import files
from .artifacts import read_config
from .errors import ArtifactError
from .module_files import load_strictly, save_module

CONFIG_FILE = "siren_config.json"
WEIGHTS_FILE = "siren.safetensors"
POOLING_TYPES = ("residual_mean", "mlp_mean")
_LAYER_KEY = re.compile(r"^layer(\d+)(?:_.*)?$")
# Generous bounds on the MLP a head file may ask for, checked before it is built (a huge layer_dims
# would otherwise take all memory): the released heads are a few thousand inputs wide, layers of hundreds.
MAX_INPUT_DIM = 1_048_576
MAX_LAYER_DIM = 65_536
MAX_HIDDEN_LAYERS = 16
MAX_MLP_PARAMETERS = 2**28


class _Section(BaseModel):
    # Unknown keys are kept (and written back): llm-siren ignores them, so released artifacts may carry more.
    model_config = ConfigDict(extra="allow", frozen=True)


class BaseModelRef(_Section):
    model_id: str
    revision: str | None = None


class SirenModuleSpec(_Section):
    pooling_type: Literal["residual_mean", "mlp_mean"]
    selected_layers: list[NonNegativeInt] = Field(min_length=1)
    layer_weights: dict[NonNegativeInt, FiniteFloat] = {}
    selected_neurons_dict: dict[str, list[int]]


class MLPSpec(_Section):
    input_dim: int = Field(ge=1, le=MAX_INPUT_DIM)
    layer_dims: list[Annotated[int, Field(ge=1, le=MAX_LAYER_DIM)]] = Field(max_length=MAX_HIDDEN_LAYERS)
    dropout_rates: list[Annotated[float, Field(ge=0, lt=1)]]
    num_classes: int = 2


class InferenceSpec(_Section):
    max_length: int = Field(ge=1)
    default_threshold: float = Field(ge=0.0, le=1.0)


class HeadConfig(_Section):
    task: str = "content"
    base_model: BaseModelRef
    siren_module: SirenModuleSpec
    mlp: MLPSpec
    inference: InferenceSpec

    @property
    def layers(self) -> list[int]:
        """Selected layers in the order their features are concatenated (ascending, as the reference)."""
        return sorted(set(self.siren_module.selected_layers))

    @property
    def pooling(self) -> str:
        return self.siren_module.pooling_type

    def neurons(self) -> dict[int, list[int]]:
        return {layer: self.siren_module.selected_neurons_dict[key] for layer, key in self._neuron_keys().items()}

    def neuron_field(self, layer: int) -> str:
        """The field path of a layer's neuron list, with the key as the file spells it."""
        return f"siren_module.selected_neurons_dict.{self._neuron_keys()[layer]}"

    def _neuron_keys(self) -> dict[int, str]:
        # llm-siren reads the layer from the key's first "_"-separated part: "layer12" or "layer12_residual".
        keys: dict[int, str] = {}
        for key in self.siren_module.selected_neurons_dict:
            match = _LAYER_KEY.match(key)
            if match is None:
                raise ValueError(f"key {key!r} is not of the form 'layer<N>'")
            keys[int(match.group(1))] = key
        return keys

    def layer_weight(self, layer: int) -> float:
        return self.siren_module.layer_weights.get(layer, 1.0)

    def to_json_dict(self) -> dict:
        data = self.model_dump(mode="json")
        data["siren_module"]["layer_weights"] = {
            str(layer): weight for layer, weight in self.siren_module.layer_weights.items()
        }
        return data


def neuron_key(layer: int) -> str:
    return f"layer{layer}"


class SirenMLP(nn.Module):
    """Same module tree as llm-siren's classifier, so its safetensors keys load strictly."""

    def __init__(self, spec: MLPSpec):
        super().__init__()
        modules: list[nn.Module] = []
        width = spec.input_dim
        for hidden, dropout in zip(spec.layer_dims, spec.dropout_rates):
            modules += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                modules.append(nn.Dropout(dropout))
            width = hidden
        modules.append(nn.Linear(width, spec.num_classes))
        self.network = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.network(features)


@dataclass(frozen=True)
class FeatureRequest:
    """What a head needs from a backbone's forward pass: pooled states of these layers."""

    pooling: str
    layers: tuple[int, ...]


class SirenHead(nn.Module):
    """A loaded head: turns per-layer pooled states into a harmfulness probability."""

    def __init__(self, config: HeadConfig, mlp: SirenMLP, source: str = "<memory>"):
        super().__init__()
        self.config = config
        self.source = source
        self.mlp = mlp.eval().requires_grad_(False)
        neurons = config.neurons()
        for layer in config.layers:
            self.register_buffer(f"neurons_{layer}", torch.as_tensor(neurons[layer], dtype=torch.long), persistent=False)

    @property
    def request(self) -> FeatureRequest:
        return FeatureRequest(self.config.pooling, tuple(self.config.layers))

    @property
    def max_length(self) -> int:
        return self.config.inference.max_length

    @property
    def default_threshold(self) -> float:
        return self.config.inference.default_threshold

    def features(self, pooled: Mapping[int, torch.Tensor]) -> torch.Tensor:
        """Concatenate the selected neurons of each layer, each layer scaled by its weight alpha_l."""
        parts = []
        for layer in self.config.layers:
            selected = pooled[layer].to(torch.float32).index_select(1, getattr(self, f"neurons_{layer}"))
            parts.append(selected * self.config.layer_weight(layer))
        return torch.cat(parts, dim=1)

    @torch.inference_mode()
    def forward(self, pooled: Mapping[int, torch.Tensor]) -> torch.Tensor:
        logits = self.mlp(self.features(pooled))
        return torch.softmax(logits, dim=-1)[:, 1]

    def check_backbone(self, num_layers: int, hidden_size: int) -> None:
        """Fail at load time, naming the field, when the head cannot read this backbone."""
        config_file = Path(self.source) / CONFIG_FILE
        too_deep = [layer for layer in self.config.layers if layer >= num_layers]
        if too_deep:
            raise ArtifactError(
                f"{config_file}: siren_module.selected_layers: layer {too_deep[0]} is beyond the "
                f"backbone's depth ({num_layers} blocks, layers 0-{num_layers - 1})"
            )
        for layer, indices in self.config.neurons().items():
            if layer in self.config.layers and max(indices) >= hidden_size:
                raise ArtifactError(
                    f"{config_file}: {self.config.neuron_field(layer)}: neuron "
                    f"{max(indices)} is beyond the backbone's hidden size {hidden_size}"
                )

    def save(self, directory: str | Path) -> Path:
        return save_module(directory, CONFIG_FILE, self.config.to_json_dict(), WEIGHTS_FILE, self.mlp)

    @classmethod
    def load(cls, directory: str | Path) -> "SirenHead":
        directory = Path(directory)
        config = read_head_config(directory)
        mlp = SirenMLP(config.mlp)
        _load_mlp_weights(mlp, directory / WEIGHTS_FILE)
        return cls(config, mlp, source=str(directory))


def read_head_config(directory: str | Path) -> HeadConfig:
    config_file = Path(directory) / CONFIG_FILE
    if not config_file.exists():
        raise ArtifactError(f"{config_file}: missing (a SIREN head directory holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = read_config(config_file, HeadConfig, "head config", limit=files.MAX_HEAD_CONFIG_BYTES)
    _check_consistency(config, config_file)
    return config


def _check_consistency(config: HeadConfig, config_file: Path) -> None:
    def fail(field: str, message: str) -> None:
        raise ArtifactError(f"{config_file}: {field}: {message}")

    if config.task != "content":
        fail("task", f"{config.task!r} artifacts score agent trajectories; this runtime scores text ('content')")
    try:
        neurons = config.neurons()
    except ValueError as error:
        fail("siren_module.selected_neurons_dict", str(error))
    for layer in config.siren_module.selected_layers:
        if layer not in neurons:
            fail("siren_module.selected_neurons_dict", f"no '{neuron_key(layer)}' entry for selected layer {layer}")
        if not neurons[layer]:
            fail(config.neuron_field(layer), "selects no neuron")
        if min(neurons[layer]) < 0:
            fail(config.neuron_field(layer), f"negative neuron index {min(neurons[layer])}")
    selected_count = sum(len(neurons[layer]) for layer in config.layers)
    if config.mlp.input_dim != selected_count:
        fail("mlp.input_dim", f"is {config.mlp.input_dim} but the selected neurons add up to {selected_count}")
    if len(config.mlp.layer_dims) != len(config.mlp.dropout_rates):
        fail("mlp.dropout_rates", f"has {len(config.mlp.dropout_rates)} entries for {len(config.mlp.layer_dims)} layer_dims")
    if config.mlp.num_classes != 2:
        fail("mlp.num_classes", f"is {config.mlp.num_classes}; the score is the probability of class 1 of 2")
    widths = [config.mlp.input_dim, *config.mlp.layer_dims, config.mlp.num_classes]
    parameters = sum((width + 1) * following for width, following in zip(widths, widths[1:]))
    if parameters > MAX_MLP_PARAMETERS:
        fail("mlp.layer_dims", f"an MLP of {parameters:,} parameters, over the limit of {MAX_MLP_PARAMETERS:,}")


def _load_mlp_weights(mlp: SirenMLP, weights_file: Path) -> None:
    load_strictly(mlp, weights_file, CONFIG_FILE, "mlp.layer_dims/dropout_rates")
