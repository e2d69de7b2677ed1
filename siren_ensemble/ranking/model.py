"""The SRR ranker (Du et al., "Safety Representation Ranking"): a small Transformer over a prompt and its
candidates, each read as pooled intermediate-layer states of one member's backbone.

Each text (the prompt alone, and the prompt joined with each candidate) becomes one token: its
standardised features projected into a joint space. One or two Transformer encoder layers let every
candidate see the prompt and the other candidates (no positions: the order of the candidates does not
matter). A candidate's logit is its cosine similarity to a "preferred" anchor that the prompt shifts,
over a temperature; ``risk = sigmoid(-logit)`` is the score rankings sort on, lowest first.

Saved as ``ranker.json`` (the config) and ``ranker.safetensors`` (the weights, with the feature
standardisation), beside a member's head; both are loaded strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..artifacts import check_dimensions, read_config, read_tensors, write_artifact
from ..errors import ArtifactError

RANKER_CONFIG_FILE = "ranker.json"
RANKER_WEIGHTS_FILE = "ranker.safetensors"
RANKER_FORMAT = "siren-ensemble-srr-ranker/1"


class RankerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = RANKER_FORMAT
    #: The backbone layers read (block outputs, numbered as heads number them), concatenated in this order.
    layers: tuple[int, ...] = Field(min_length=1)
    pooling: str = "residual_mean"
    max_length: int = Field(ge=1)
    #: The backbone's depth and width, checked when the ranker is put on a member.
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    #: How the backbone was named when the ranker was trained (adapter, weights, dtype): for people, not checked.
    backbone: dict = {}
    #: The sources of the groups it was trained on (evaluation calls every other source held out).
    sources: tuple[str, ...] = ()
    width: int = Field(128, ge=8, le=4096)
    heads: int = Field(4, ge=1)
    encoder_layers: int = Field(1, ge=1, le=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    temperature: float = Field(0.1, gt=0)

    @property
    def input_dim(self) -> int:
        return len(self.layers) * self.hidden_size


class SRRRanker(nn.Module):
    def __init__(self, config: RankerConfig, source: str = "<memory>"):
        super().__init__()
        if config.width % config.heads:
            raise ArtifactError(f"{source}: width {config.width} is not a multiple of heads {config.heads}")
        self.config = config
        self.source = source
        self.register_buffer("feature_mean", torch.zeros(config.input_dim))
        self.register_buffer("feature_scale", torch.ones(config.input_dim))
        width = config.width
        self.project = nn.Sequential(nn.Linear(config.input_dim, width), nn.GELU(), nn.Dropout(config.dropout),
                                     nn.Linear(width, width))
        self.role = nn.Embedding(2, width)  # 0: the prompt, 1: a candidate
        layer = nn.TransformerEncoderLayer(width, config.heads, 2 * width, config.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.encoder_layers, enable_nested_tensor=False)
        self.anchor = nn.Parameter(torch.randn(width) * 0.02)
        self.condition = nn.Linear(width, width)

    def set_standardisation(self, features: torch.Tensor) -> None:
        with torch.no_grad():
            self.feature_mean.copy_(features.mean(dim=0))
            self.feature_scale.copy_(features.std(dim=0).clamp(min=1e-4))

    def forward(self, prompts: torch.Tensor, candidates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (groups, candidates), higher is preferred; padded candidates (``mask`` False) get -inf.

        ``prompts`` (groups, input_dim), ``candidates`` (groups, candidates, input_dim), ``mask`` (groups, candidates).
        """
        tokens = torch.cat([prompts.unsqueeze(1), candidates], dim=1)
        tokens = (tokens - self.feature_mean) / self.feature_scale
        roles = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        roles[:, 0] = 0
        hidden = self.project(tokens) + self.role(roles)
        padding = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], dim=1)
        hidden = self.encoder(hidden, src_key_padding_mask=padding)
        anchor = self.anchor + self.condition(hidden[:, 0])
        similarity = torch.cosine_similarity(hidden[:, 1:], anchor.unsqueeze(1), dim=-1)
        return (similarity / self.config.temperature).masked_fill(~mask, float("-inf"))

    @torch.inference_mode()
    def risks(self, prompt: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``sigmoid(-logit)`` of each candidate of one prompt (lower ranks first)."""
        self.eval()
        mask = torch.ones((1, len(candidates)), dtype=torch.bool)
        return torch.sigmoid(-self(prompt.unsqueeze(0), candidates.unsqueeze(0), mask))[0]

    def check_backbone(self, num_layers: int, hidden_size: int) -> None:
        check_dimensions(Path(self.source) / RANKER_CONFIG_FILE, (self.config.num_layers, self.config.hidden_size),
                         (num_layers, hidden_size), "this member's backbone")

    def save(self, directory: str | Path) -> Path:
        return write_artifact(directory, RANKER_CONFIG_FILE, self.config.model_dump(mode="json"), RANKER_WEIGHTS_FILE,
                              self.state_dict())

    @classmethod
    def load(cls, directory: str | Path) -> "SRRRanker":
        directory = Path(directory)
        config = read_ranker_config(directory / RANKER_CONFIG_FILE)
        ranker = cls(config, source=str(directory))
        expected = {name: tuple(tensor.shape) for name, tensor in ranker.state_dict().items()}
        ranker.load_state_dict(read_tensors(directory / RANKER_WEIGHTS_FILE, expected, RANKER_CONFIG_FILE), strict=True)
        return ranker.eval().requires_grad_(False)


def has_ranker(directory: str | Path) -> bool:
    return (Path(directory) / RANKER_CONFIG_FILE).is_file()


def read_ranker_config(path: Path) -> RankerConfig:
    config = read_config(path, RankerConfig, "ranker config", RANKER_FORMAT)
    too_deep = [layer for layer in config.layers if not 0 <= layer < config.num_layers]
    if too_deep:
        raise ArtifactError(f"{path}: layers: layer {too_deep[0]} is outside the backbone's {config.num_layers} layers")
    return config
