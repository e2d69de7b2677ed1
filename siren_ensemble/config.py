"""The ensemble's YAML config, validated into typed, frozen objects.

Every error names the field's path (``members[1].dtype``). Relative paths resolve against the
directory of the config file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from . import files, plugins
from .conversation import Judge
from .errors import ConfigError
from .precision import INT8, check_int8_device
from .taxonomy import BY_KEY, unknown_category_message
from .validation import format_validation_error
from .weights import is_gguf_reference, resolve_path

DEVICE_PATTERN = r"^(cpu|auto|mps|cuda(:\d+)?)$"
#: from_pretrained arguments the member's own fields control; backbone_options may not override them.
RESERVED_LOAD_OPTIONS = frozenset({
    "revision", "gguf_file", "dtype", "torch_dtype", "device_map", "max_memory", "trust_remote_code",
    "subfolder", "cache_dir", "token", "local_files_only", "use_safetensors", "weights_only",
})
#: Of those, the ones that keep weights off pickle: siren-ensemble sets them, never a config.
SAFETENSORS_ONLY_OPTIONS = frozenset({"use_safetensors", "weights_only"})
#: Weights are relative; a bound keeps their sum finite.
MAX_MEMBER_WEIGHT = 1e6


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemberConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    backbone: str
    head: str
    #: A hub id, a local directory, a GGUF file, a ``pkg:`` file, or a list of GGUF parts to concatenate.
    model: str | list[str] | None = None
    gguf_file: str | None = None
    #: The GGUF file's sha256 (of the concatenation, for parts); a mismatch refuses to load.
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    revision: str | None = None
    head_revision: str | None = None
    device: str = Field("cpu", pattern=DEVICE_PATTERN)
    device_map: dict[str, str | int] | None = None
    max_memory: dict[str | int, str | int] | None = None
    #: auto: bfloat16 on a CPU with native bf16 (AVX512-BF16, AMX) or a bf16 GPU, else float32.
    #: int8: the backbone's linear layers dynamically quantised to int8, float32 activations (CPU only).
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = "auto"
    #: Relative: weighted combiners divide by the total.
    weight: float = Field(1.0, ge=0, le=MAX_MEMBER_WEIGHT, allow_inf_nan=False)
    threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    trust_remote_code: bool = False
    #: Extra keyword arguments for the model's from_pretrained (e.g. attn_implementation).
    backbone_options: dict[str, str | int | float | bool | None] = {}


class CombinerConfig(BaseModel):
    # The combiner's own options sit beside `type` and are validated by the combiner's Options model.
    model_config = ConfigDict(extra="allow", frozen=True)
    type: str = "mean"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class BatchingConfig(_Strict):
    #: Padded tokens (texts x longest text) per forward pass.
    max_tokens: int = Field(8192, ge=1)
    max_texts: int = Field(64, ge=1)
    #: Share of a batch's padded tokens that may be padding before a shorter text starts a new batch.
    max_padding: float = Field(0.25, ge=0, le=1)


class SlidingWindowConfig(_Strict):
    """Opt-in: score a text longer than a head's max_length by windows; its score is the max over them."""

    #: Tokens between the starts of consecutive windows; default half a window (windows overlap by half).
    stride: int | None = Field(None, ge=1)


class ConversationConfig(_Strict):
    """How chat messages are judged: the last user turn and its answer, in the context of earlier turns and alone."""

    #: Turns before the judged ones read as context (the nearest); 0 reads the judged turns alone, rendered as a chat.
    window: int = Field(6, ge=0, le=512)
    #: auto: each backbone's chat template when its tokenizer has one, else "role: content" lines; plain: always lines.
    template: Literal["auto", "plain"] = "auto"
    #: either: in context and the last turns alone, the higher score (fails closed: either view flags) | context | last_turns.
    judge: Judge = "either"


class LanguagesConfig(_Strict):
    """What happens to text in a language the heads were not validated on (docs/languages.md has the measurements)."""

    #: Languages (ISO 639 codes, as the language-ID model names them) whose recall and FPR were measured.
    validated: list[str] = ["en"]
    #: flag: such text is flagged (``is_harmful``; the heads' own score is kept), a guard failing closed on what it
    #: cannot read | score: the heads decide as for any text. Either way the result names the language.
    unvalidated: Literal["flag", "score"] = "flag"
    #: A text counts as written in a language only when the language-ID model is this sure of it ...
    min_confidence: float = Field(0.8, ge=0, le=1, allow_inf_nan=False)
    #: ... and, in the Latin script, it has at least this many letters: shorter ones are misread too often ("Will you
    #: die" -> German); text in another script (Devanagari, Cyrillic, Han, ...) needs two.
    min_letters: int = Field(20, ge=0)


def check_workers(value: int | tuple[int, int]) -> int | tuple[int, int]:
    low, high = (value, value) if isinstance(value, int) else value
    if low < 1 or high < low:
        raise ValueError(f"expected a number of at least 1, or [min, max] with 1 <= min <= max; got {value!r}")
    return value


#: A fixed number of Ray workers, or [min, max]: a pool Ray grows and shrinks with the load.
Workers = Annotated[int | tuple[int, int], AfterValidator(check_workers)]


class RayDataConfig(_Strict):
    """``score --engine ray``: the actors that score a corpus, each loading the ensemble once."""

    concurrency: Workers = 1
    #: Rows per call of an actor; the ensemble splits them into forward passes by ``batching``.
    batch_size: int = Field(64, ge=1)
    #: Resources Ray reserves per actor (torch uses num_cpus threads).
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class RayServeConfig(_Strict):
    """``serve --engine ray``: the replicas of the Ray Serve deployment."""

    replicas: Workers = 1
    #: With [min, max] replicas: requests in flight per replica that Ray Serve's autoscaler aims for.
    target_ongoing_requests: float = Field(2.0, gt=0)
    #: Requests a replica takes at once; more wait in Ray Serve's queue. At least the batch size to fill batches.
    max_ongoing_requests: int = Field(64, ge=1)
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class RayConfig(_Strict):
    """Scale-out on Ray (the ``ray`` extra); command-line flags override these."""

    data: RayDataConfig = RayDataConfig()
    serve: RayServeConfig = RayServeConfig()


#: What an input holds: a prompt alone, or a prompt and the response that answers it (``siren_ensemble.routing``).
InputKind = Literal["prompt", "response"]
INPUT_KINDS: tuple[InputKind, ...] = ("prompt", "response")


class RouteConfig(_Strict):
    """How one kind of input is decided, where it differs from the top level: its own combiner (a cascade's stage
    order and bands), threshold and calibration. A route with its own combiner has its own threshold and calibration
    too (the top level's were chosen for another combiner; left out: the combiner's implied threshold, else 0.5, and
    none); a route without one keeps the top level's combiner, and its threshold and calibration where it has none."""

    combiner: CombinerConfig | None = None
    threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    calibration: str | None = None


class EnsembleConfig(_Strict):
    members: list[MemberConfig] = Field(min_length=1)
    combiner: CombinerConfig = CombinerConfig()
    threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    on_member_error: Literal["fail_closed", "fail_open", "raise"] = "fail_closed"
    batching: BatchingConfig = BatchingConfig()
    #: A score calibration JSON (``siren-ensemble calibrate --method``), applied to the combined score.
    calibration: str | None = None
    #: Unset (the default): a long text is truncated to the head's max_length, as llm-siren does.
    sliding_window: SlidingWindowConfig | None = None
    #: Harm category -> threshold on its ensemble score (``calibrate --per-category``); unlisted ones use 0.5.
    category_thresholds: dict[str, Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]] = {}
    conversation: ConversationConfig = ConversationConfig()
    languages: LanguagesConfig = LanguagesConfig()
    ray: RayConfig = RayConfig()
    #: Per kind of input, a route of its own (``by_kind: {response: {combiner: ..., threshold: ...}}``); a kind not
    #: listed is decided by the top-level combiner, threshold and calibration.
    by_kind: dict[InputKind, RouteConfig] = {}

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr(default="config")

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def source(self) -> str:
        """The config file's path, or "config" for one built from a dict."""
        return self._source

    @classmethod
    def from_dict(cls, raw: Any, base_dir: str | Path | None = None, source: str = "config") -> "EnsembleConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with `members:` at the top level, got {type(raw).__name__}")
        try:
            config = cls.model_validate(raw)
        except ValidationError as error:
            raise ConfigError(f"{source}: {format_validation_error(error, cls)}") from None
        config._base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        config._source = source
        try:
            config._check_semantics()
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
        return config

    def _check_semantics(self) -> None:
        seen: dict[str, int] = {}
        backbone_registry = plugins.backbones()
        for index, member in enumerate(self.members):
            where = f"members[{index}]"
            if member.name in seen:
                raise ConfigError(f"{where}.name: duplicate name {member.name!r} (also members[{seen[member.name]}])")
            seen[member.name] = index
            if member.backbone not in backbone_registry:
                raise ConfigError(f"{where}.backbone: {backbone_registry.unknown_message(member.backbone)}")
            not_names = [key for key in member.backbone_options if not key.isidentifier()]
            if not_names:
                raise ConfigError(f"{where}.backbone_options: {not_names[0]!r} is not a from_pretrained argument name")
            reserved = sorted(set(member.backbone_options) & RESERVED_LOAD_OPTIONS)
            if reserved and reserved[0] in SAFETENSORS_ONLY_OPTIONS:
                raise ConfigError(
                    f"{where}.backbone_options.{reserved[0]}: weights load from safetensors only (a pickle can run "
                    f"code when it loads); siren-ensemble sets this itself"
                )
            if reserved:
                raise ConfigError(
                    f"{where}.backbone_options.{reserved[0]}: set by the member's own fields "
                    f"(model, revision, gguf_file, dtype, device, trust_remote_code), not here"
                )
            if member.dtype == INT8:
                try:
                    check_int8_device(member.device)
                except ConfigError as error:
                    raise ConfigError(f"{where}.dtype: {error}") from None
            if (member.device_map or member.max_memory) and member.device != "auto":
                raise ConfigError(f"{where}.device: device_map and max_memory need device 'auto' (got {member.device!r})")
            if member.model is None and member.gguf_file is not None and not resolve_path(member.gguf_file, self.base_dir).is_file():
                raise ConfigError(f"{where}.gguf_file: {resolve_path(member.gguf_file, self.base_dir)} does not exist")
            if isinstance(member.model, list):
                if not member.model:
                    raise ConfigError(f"{where}.model: an empty list; list the GGUF parts in order")
                if member.gguf_file is not None:
                    raise ConfigError(f"{where}.gguf_file: not with a list of GGUF parts in `model`")
            if member.sha256 is not None and not is_gguf_reference(member.model, member.gguf_file):
                raise ConfigError(
                    f"{where}.sha256: pins a GGUF file (model: a .gguf path, a pkg: file or a list of parts, or "
                    f"gguf_file); for a hub repository or a directory pin `revision` instead"
                )
        for key in self.category_thresholds:
            if key not in BY_KEY:
                raise ConfigError(f"category_thresholds.{key}: {unknown_category_message(key)}")
        self._check_decision()
        for kind in self.by_kind:
            try:
                self.for_kind(kind)._check_decision()
            except ConfigError as error:
                raise ConfigError(f"by_kind.{kind}: {error}") from None

    def for_kind(self, kind: str | None) -> "EnsembleConfig":
        """The config as inputs of ``kind`` are decided: its ``by_kind`` route's fields in place of the top level's
        (the route's members and everything else are the top level's)."""
        route = self.by_kind.get(kind) if kind is not None else None
        if route is None:
            return self
        if route.combiner is not None:
            update = {"combiner": route.combiner, "threshold": route.threshold, "calibration": route.calibration}
        else:
            update = {name: value for name in ("threshold", "calibration") if (value := getattr(route, name)) is not None}
        return self.model_copy(update={**update, "by_kind": {}})

    def _check_decision(self) -> None:
        """The combiner, its options, the calibration file and the threshold, checked against each other."""
        combiner_registry = plugins.combiners()
        if self.combiner.type not in combiner_registry:
            raise ConfigError(f"combiner.type: {combiner_registry.unknown_message(self.combiner.type)}")
        self.combiner_options()
        if self.calibration is not None:
            if self.combiner.type == "vote":
                raise ConfigError("calibration: the vote combiner's score is a vote fraction; calibrate a score combiner")
            if not resolve_path(self.calibration, self.base_dir).is_file():
                raise ConfigError(f"calibration: {resolve_path(self.calibration, self.base_dir)} does not exist")
        if self.combiner.type == "vote" and self.threshold is not None:
            raise ConfigError(
                "threshold: the vote combiner decides by its rule (any, majority or k of n); "
                "remove `threshold` and set combiner.rule / combiner.k, or members[*].threshold"
            )

    def combiner_options(self) -> BaseModel:
        options_model = plugins.combiners().get(self.combiner.type).cls.Options
        try:
            return options_model.model_validate(self.combiner.options)
        except ValidationError as error:
            raise ConfigError(format_validation_error(error, options_model, prefix=("combiner",))) from None


def load_config(path: str | Path) -> EnsembleConfig:
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: empty config")
    return EnsembleConfig.from_dict(raw, base_dir=path.parent.resolve(), source=str(path))


def read_yaml(path: Path) -> Any:
    """A config file's YAML, read under ``files.MAX_CONFIG_BYTES``; every problem is a ConfigError naming the file."""
    text = files.read_text(path, files.MAX_CONFIG_BYTES, ConfigError, "config file")
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}: invalid YAML: {where}{problem}") from None
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key written twice in one mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_lines: dict[Any, int] = {}
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with << may be overridden, as YAML means them to be
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in first_lines:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (first on line {first_lines[key]})", key_node.start_mark)
                    first_lines[key] = key_node.start_mark.line + 1
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it
        return super().construct_mapping(node, deep=deep)
