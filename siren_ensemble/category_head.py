"""The category head: which kinds of harm a text holds, read from the features the binary head reads.

It sits beside a SIREN head as ``categories.json`` (config) + ``categories.safetensors`` (weights)
and reads exactly the binary head's input: its selected neurons, each layer scaled by its weight.
So it costs no extra forward pass and no extra layer, and the binary head's own files stay exactly
llm-siren's format. It is multi-label: standardised features -> an MLP (or a linear layer) -> one
sigmoid per category of ``siren_ensemble.taxonomy``. Loading is strict: an unknown or missing key, a
tensor of the wrong shape, or a head trained on another binary head's features is an error naming
the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from . import files
from .errors import ArtifactError
from .head import HeadConfig, MAX_INPUT_DIM, MAX_LAYER_DIM
from .module_files import load_strictly, save_module
from .taxonomy import check_categories
from .validation import format_validation_error

CONFIG_FILE = "categories.json"
WEIGHTS_FILE = "categories.safetensors"
FORMAT = "siren-ensemble-categories"
MAX_HIDDEN_LAYERS = 4


class CategoryHeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    format: str = FORMAT
    version: int = 1
    #: Taxonomy keys, one output each, in this order.
    categories: list[str] = Field(min_length=1)
    input_dim: int = Field(ge=1, le=MAX_INPUT_DIM)
    #: sha256 of the binary head's layers, neurons and layer weights: the features this head was trained on.
    features_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    hidden_dims: list[Annotated[int, Field(ge=1, le=MAX_LAYER_DIM)]] = Field([], max_length=MAX_HIDDEN_LAYERS)
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a category is listed twice")
        check_categories(value)
        return value


def features_digest(head: HeadConfig) -> str:
    """What fixes the binary head's features: its layers, neurons and layer weights."""
    identity = {str(layer): [head.neurons()[layer], head.layer_weight(layer)] for layer in head.layers}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class CategoryMLP(nn.Module):
    """Standardisation (stored mean and scale) then Linear/ReLU/Dropout layers, one logit per category."""

    def __init__(self, config: CategoryHeadConfig):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(config.input_dim))
        self.register_buffer("feature_scale", torch.ones(config.input_dim))
        modules: list[nn.Module] = []
        width = config.input_dim
        for hidden in config.hidden_dims:
            modules += [nn.Linear(width, hidden), nn.ReLU()]
            if config.dropout > 0:
                modules.append(nn.Dropout(config.dropout))
            width = hidden
        modules.append(nn.Linear(width, len(config.categories)))
        self.network = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.network((features - self.feature_mean) / self.feature_scale)


class CategoryHead(nn.Module):
    def __init__(self, config: CategoryHeadConfig, mlp: CategoryMLP, source: str = "<memory>"):
        super().__init__()
        self.config = config
        self.source = source
        self.mlp = mlp.eval().requires_grad_(False)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.config.categories)

    @torch.inference_mode()
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Per text, the probability of each category (texts x categories)."""
        return torch.sigmoid(self.mlp(features.to(torch.float32)))

    def check_head(self, head: HeadConfig, head_source: str) -> None:
        """Fail, naming the file, when this head was trained on another binary head's features."""
        config_file = Path(self.source) / CONFIG_FILE
        if self.config.input_dim != head.mlp.input_dim:
            raise ArtifactError(f"{config_file}: input_dim: is {self.config.input_dim}, but the SIREN head in "
                                f"{head_source} reads {head.mlp.input_dim} features")
        if self.config.features_digest != features_digest(head):
            raise ArtifactError(f"{config_file}: features_digest: trained on another SIREN head's neurons or layer "
                                f"weights than {head_source}'s; train it again (`siren-ensemble train-categories`)")

    def save(self, directory: str | Path) -> Path:
        return save_module(directory, CONFIG_FILE, self.config.model_dump(mode="json"), WEIGHTS_FILE, self.mlp)

    @classmethod
    def load(cls, directory: str | Path) -> "CategoryHead":
        directory = Path(directory)
        config = read_category_config(directory / CONFIG_FILE)
        mlp = CategoryMLP(config)
        _load_weights(mlp, directory / WEIGHTS_FILE)
        return cls(config, mlp, source=str(directory))


def has_category_head(directory: str | Path) -> bool:
    return (Path(directory) / CONFIG_FILE).is_file()


def read_category_config(config_file: Path) -> CategoryHeadConfig:
    text = files.read_text(config_file, files.MAX_HEAD_CONFIG_BYTES, ArtifactError, "category head config")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{config_file}: not valid JSON ({error})") from None
    if isinstance(raw, dict) and raw.get("format", FORMAT) != FORMAT:
        raise ArtifactError(f"{config_file}: format: expected {FORMAT!r}, got {raw['format']!r}")
    try:
        return CategoryHeadConfig.model_validate(raw)
    except ValidationError as error:
        raise ArtifactError(f"{config_file}: {format_validation_error(error, CategoryHeadConfig)}") from None


def _load_weights(mlp: CategoryMLP, weights_file: Path) -> None:
    load_strictly(mlp, weights_file, CONFIG_FILE, "hidden_dims/categories",
                  missing=f"a category head is {CONFIG_FILE} and {WEIGHTS_FILE}")
    for key, tensor in mlp.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ArtifactError(f"{weights_file}: tensor {key} holds non-finite values")
