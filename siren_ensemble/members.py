"""From a validated config to resolved members: heads loaded, backbone specs settled, checks done.

Nothing here loads model weights; ``validate`` stops after these steps, ``Ensemble`` goes on
to load one backbone per distinct spec.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import asdict, dataclass
from pathlib import Path

from . import plugins
from .backbones.base import BackboneAdapter, BackboneSpec
from .calibration import MEMBER_CALIBRATION_FILE, Calibration
from .category_head import CONFIG_FILE as CATEGORY_CONFIG_FILE, WEIGHTS_FILE as CATEGORY_WEIGHTS_FILE, CategoryHead, has_category_head
from .cascade import CascadeOptions
from .combiners import Combiner, MemberView
from .config import CombinerConfig, EnsembleConfig, MemberConfig
from .errors import ConfigError, SirenError
from .head import CONFIG_FILE, WEIGHTS_FILE, SirenHead
from .precision import DtypeChoice, resolve
from .weights import ResolvedWeights, head_directory, resolve_weights, settle_model


@dataclass(frozen=True)
class MemberPlan:
    index: int
    name: str
    head: SirenHead
    adapter: BackboneAdapter
    weight: float
    threshold: float
    #: The dtype the backbone computes in (``spec.dtype``), what the config asked for, and why.
    precision: DtypeChoice
    #: Maps this head's score onto the scale the members share (fitted on out-of-fold scores by `train`);
    #: ``None`` when the head directory has no ``calibration.json``.
    calibration: Calibration | None = None
    #: The head's category head (``categories.json`` beside it), reading the same features; ``None`` without one.
    categories: CategoryHead | None = None

    @property
    def spec(self) -> BackboneSpec:
        return self.adapter.spec

    @property
    def where(self) -> str:
        return f"members[{self.index}]"

    @functools.cached_property
    def backbone_weights(self) -> ResolvedWeights:
        """The backbone's weights, resolved (fetched, verified, converted) once, on first use."""
        return resolve_weights(self.spec.weights)


def plan_members(config: EnsembleConfig) -> list[MemberPlan]:
    plans = []
    for index, member in enumerate(config.members):
        where = f"members[{index}]"
        try:
            directory = member_head_directory(member, config.base_dir)
            head = SirenHead.load(directory)
            calibration = Calibration.load(directory / MEMBER_CALIBRATION_FILE) if (directory / MEMBER_CALIBRATION_FILE).is_file() else None
            categories = CategoryHead.load(directory) if has_category_head(directory) else None
            if categories is not None:
                categories.check_head(head.config, str(directory))
        except SirenError as error:
            raise type(error)(f"{where}.head: {error}") from None
        adapter = _adapter(member, head, config.base_dir, where)
        threshold = member.threshold if member.threshold is not None else head.default_threshold
        precision = resolve(member.dtype, member.device)
        plans.append(MemberPlan(index, member.name, head, adapter, member.weight, threshold, precision, calibration,
                                categories))
    return plans


def adapter_for(backbone: str, model: str | list[str] | None, gguf_file: str | None = None, revision: str | None = None,
                dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
                sha256: str | None = None) -> BackboneAdapter:
    """An adapter from command-line style arguments (``train``), checked like a config member."""
    from .config import MemberConfig

    fields = {"name": "train", "backbone": backbone, "head": ".", "model": model, "gguf_file": gguf_file,
              "revision": revision, "dtype": dtype, "device": device, "trust_remote_code": trust_remote_code,
              "sha256": sha256}
    config = EnsembleConfig.from_dict({"members": [{k: v for k, v in fields.items() if v is not None}]}, source="arguments")
    member = config.members[0]
    if member.model is None and member.gguf_file is None:
        raise ConfigError("--model: required (a hub id, a local directory, a GGUF or pkg: file), or --gguf-file alone")
    return _adapter(member, None, config.base_dir, "arguments")


def member_named(config: EnsembleConfig, name: str) -> MemberConfig:
    """The member called ``name`` (``--member``); an unknown name lists the config's members."""
    names = [member.name for member in config.members]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"--member: {config.source} has no member {name!r}{guess} (it has {', '.join(names)})")
    return config.members[names.index(name)]


def adapter_of_member(config: EnsembleConfig, name: str, dtype: str | None = None) -> BackboneAdapter:
    """The backbone of one named member of a config (``train --config --member``); its head need not exist yet.

    ``dtype`` replaces the member's own (features for training in bf16 from a float32 config, say).
    """
    member = member_named(config, name)
    index = config.members.index(member)
    if member.model is None and member.gguf_file is None:
        raise ConfigError(f"members[{index}].model: training needs the member's model (the head may not exist yet)")
    if dtype is not None:
        member = member.model_copy(update={"dtype": dtype})
    return _adapter(member, None, config.base_dir, f"members[{index}]")


def _adapter(member: MemberConfig, head: SirenHead | None, base_dir: Path, where: str) -> BackboneAdapter:
    registration = plugins.backbones().get(member.backbone)
    return registration.cls(_backbone_spec(member, head, base_dir, registration.name, where))


def check_heads_against_backbones(plans: list[MemberPlan], remote_code: bool = True) -> None:
    """Read each distinct backbone's config (no weights) and check every head can read it.

    ``remote_code=False`` skips members with ``trust_remote_code``: reading their config would run the
    model repository's code (``validate`` promises to run nothing).
    """
    depth_and_width: dict[BackboneSpec, tuple[int, int]] = {}
    for plan in plans:
        if plan.spec.trust_remote_code and not remote_code:
            continue
        try:
            if plan.spec not in depth_and_width:
                model_config = plan.adapter.load_config(plan.backbone_weights)
                depth_and_width[plan.spec] = (plan.adapter.num_layers(model_config), plan.adapter.hidden_size(model_config))
            plan.head.check_backbone(*depth_and_width[plan.spec])
        except SirenError as error:
            raise type(error)(f"{plan.where}: {error}") from None


def describe_streams_before_loading(plans: list[MemberPlan]) -> list[str]:
    """Per member, what its config tells of its streams without weights: why they will re-encode every chunk, or
    that the probe of the loaded model decides (``score --verbose`` reports it). Skips ``trust_remote_code`` members."""
    from transformers import MODEL_MAPPING

    from .extraction import stream_support_before_loading

    lines = []
    for plan in plans:
        if plan.spec.trust_remote_code:
            continue
        model_config = plan.adapter.load_config(plan.backbone_weights)
        model_class = MODEL_MAPPING[type(model_config)] if type(model_config) in MODEL_MAPPING else None
        if model_class is None:
            lines.append(f"  {plan.name}: stream: decided when the model loads (score --verbose says how)")
            continue
        unfit = stream_support_before_loading(plan.spec, model_class)
        lines.append(f"  {plan.name}: stream: " + (unfit.describe() if unfit is not None else
                     f"{model_class.__name__} takes a KV cache; incremental if the loaded model proves causal "
                     "(score --verbose says)"))
    return lines


def member_head_directory(member: MemberConfig, base_dir: Path) -> Path:
    """The directory of a member's head; from the hub, only the head's files and its category head's."""
    return head_directory(member.head, member.head_revision, base_dir,
                          (CONFIG_FILE, WEIGHTS_FILE, CATEGORY_CONFIG_FILE, CATEGORY_WEIGHTS_FILE))


def _backbone_spec(member: MemberConfig, head: SirenHead | None, base_dir: Path, adapter_name: str, where: str) -> BackboneSpec:
    base_model = (head.config.base_model.model_id, head.config.base_model.revision) if head is not None else None
    reference = settle_model(member.model, member.gguf_file, member.sha256, member.revision, base_dir, where, base_model)
    return BackboneSpec(
        adapter=adapter_name,
        **asdict(reference),
        dtype=resolve(member.dtype, member.device).dtype,
        device=member.device,
        device_map=tuple(sorted(member.device_map.items())) if member.device_map else None,
        max_memory=tuple(sorted(member.max_memory.items(), key=str)) if member.max_memory else None,
        trust_remote_code=member.trust_remote_code,
        options=tuple(sorted(member.backbone_options.items())),
    )


def build_combiner(config: EnsembleConfig, plans: list[MemberPlan], combiner: CombinerConfig | None = None,
                   thresholds: list[float] | None = None) -> Combiner:
    """The config's combiner, or ``combiner`` in its place; ``thresholds`` replace the members' own (vote)."""
    combiner = combiner or config.combiner
    registration = plugins.combiners().get(combiner.type)
    thresholds = thresholds if thresholds is not None else [plan.threshold for plan in plans]
    views = [MemberView(plan.name, plan.weight, threshold) for plan, threshold in zip(plans, thresholds)]
    try:
        options = registration.cls.Options.model_validate(combiner.options) if combiner is not config.combiner \
            else config.combiner_options()
        return registration.cls(options, views, config.base_dir)
    except SirenError as error:
        raise type(error)(f"{config.source}: {error}") from None


def validate_plan(config: EnsembleConfig, remote_code: bool = True) -> tuple[list[MemberPlan], Combiner]:
    """Everything ``validate`` checks: heads, backbone configs, the combiner; no weights loaded (and, with
    ``remote_code=False``, no config of a ``trust_remote_code`` member read)."""
    plans = plan_members(config)
    check_heads_against_backbones(plans, remote_code)
    return plans, build_combiner(config, plans)


def describe_plan(config: EnsembleConfig, plans: list[MemberPlan]) -> str:
    lines = [f"combiner: {config.combiner.type}; on_member_error: {config.on_member_error}"]
    options = config.combiner_options()
    if isinstance(options, CascadeOptions):
        for index, stage in enumerate(options.stages):
            bands = [f"below {stage.low}" if stage.low is not None else "", f"from {stage.high}" if stage.high is not None else ""]
            decides = " or ".join(band for band in bands if band) or ("every text left" if index == len(options.stages) - 1 else "nothing (no bands)")
            lines.append(f"  stage {index}: {', '.join(stage.members)}; combine {options.combine}; decides {decides}")
    for plan in plans:
        head = plan.head.config
        lines.append(
            f"  {plan.name}: backbone {plan.spec.adapter} on {plan.spec.describe()} ({plan.spec.device}); "
            f"head {head.pooling}, layers {head.layers[0]}-{head.layers[-1]} ({len(head.layers)}), "
            f"{head.mlp.input_dim} neurons, max_length {head.inference.max_length}, threshold {plan.threshold}"
        )
        lines.append(f"    dtype: {plan.precision.describe()}")
    return "\n".join(lines)
