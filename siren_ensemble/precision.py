"""What each member computes in: ``dtype: auto`` resolved once per process, with the reason, and ``int8``.

``auto`` is bfloat16 where the hardware computes it natively and float32 everywhere else: on a CPU
with AVX512-BF16 or AMX, bf16 matmuls run 2-4x faster than float32; on a CPU without them PyTorch
emulates bf16 and it is slower than float32 (docs/benchmarks.md).

``int8`` quantises the backbone's ``nn.Linear`` weights to int8 after loading (PyTorch dynamic
quantisation: activations stay float32 and are quantised per matmul); CPU only.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from .config import EnsembleConfig

#: CPU flags (as /proc/cpuinfo names them) that give native bf16 matmuls.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: "1" or "0" overrides the detection (to compare both choices on one machine, or where /proc is hidden).
CPU_BF16_ENV = "SIREN_ENSEMBLE_CPU_BF16"
#: Dtypes that load the weights as they are named; ``int8`` loads float32 and quantises the linear layers.
INT8 = "int8"


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype a member computes in, what its config asked for, and why the two relate as they do."""

    requested: str
    dtype: str
    reason: str

    def describe(self) -> str:
        """``bfloat16 (auto: CPU has avx512_bf16)``, or ``float32 (set in the config)``."""
        return f"{self.dtype} ({'auto: ' if self.requested == 'auto' else ''}{self.reason})"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def resolve(dtype: str, device: str) -> DtypeChoice:
    """The concrete dtype for ``dtype`` on ``device``, with the reason; hardware is probed once per process."""
    if dtype == INT8:
        check_int8_device(device)
        return DtypeChoice(dtype, INT8, "set in the config: linear layers quantised to int8, float32 activations")
    if dtype != "auto":
        return DtypeChoice(dtype, dtype, "set in the config")
    if device.startswith("cuda") or (device == "auto" and _cuda_available()):
        return _cuda_choice()
    if device == "mps":
        return DtypeChoice("auto", "float32", "MPS: bf16 support varies by chip, float32 is safe")
    return _cpu_choice()


def resolve_dtype(dtype: str, device: str) -> str:
    """The concrete dtype for ``dtype`` on ``device``; only ``auto`` is resolved."""
    return resolve(dtype, device).dtype


def member_dtypes(config: "EnsembleConfig") -> dict[str, DtypeChoice]:
    """Each member's resolved dtype and its reason, from the config alone (no weights loaded): for reports and benches."""
    return {member.name: resolve(member.dtype, member.device) for member in config.members}


def check_int8_device(device: str) -> None:
    if device != "cpu":
        raise ConfigError(
            f"dtype int8 (dynamic quantisation of the linear layers) runs on the CPU only, not on device {device!r}; "
            f"set device: cpu, or use dtype auto, bfloat16 or float16 on an accelerator"
        )


def clear_cache() -> None:
    """Forget what was detected (tests that fake CPU flags or the environment variable call this)."""
    for cached in _DETECTIONS:
        cached.cache_clear()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return _cpu_choice().dtype == "bfloat16"


@functools.lru_cache(maxsize=1)
def _cpu_choice() -> DtypeChoice:
    forced = os.environ.get(CPU_BF16_ENV)
    if forced in ("0", "1"):
        return DtypeChoice("auto", "bfloat16" if forced == "1" else "float32", f"{CPU_BF16_ENV}={forced}")
    flags = cpu_flags()
    native = [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
    if native:
        return DtypeChoice("auto", "bfloat16", f"CPU has {', '.join(native)}")
    return DtypeChoice("auto", "float32", f"CPU has no native bf16 (none of {', '.join(NATIVE_BF16_FLAGS)})")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def _cuda_choice() -> DtypeChoice:
    import torch

    if not torch.cuda.is_available():
        return DtypeChoice("auto", "float32", "no CUDA device available")
    name = torch.cuda.get_device_name()
    if torch.cuda.is_bf16_supported():
        return DtypeChoice("auto", "bfloat16", f"GPU {name} supports bf16")
    return DtypeChoice("auto", "float32", f"GPU {name} has no bf16")


#: What clear_cache forgets (the functions themselves: a test may have replaced the module's names).
_DETECTIONS = (cpu_flags, _cpu_choice, _cuda_choice)


def quantize_linear_layers(model: "nn.Module") -> "nn.Module":
    """``model`` with every ``nn.Linear`` replaced by a dynamically quantised int8 one (in place; CPU only)."""
    import torch
    from torch import nn

    quantize_dynamic = getattr(getattr(torch, "ao", None), "quantization", None)
    quantize_dynamic = getattr(quantize_dynamic, "quantize_dynamic", None)
    if quantize_dynamic is None:
        raise ConfigError(
            f"dtype int8: this PyTorch ({torch.__version__}) has no torch.ao.quantization.quantize_dynamic; "
            f"use dtype auto or float32"
        )
    with warnings.catch_warnings():
        # PyTorch announces the move of eager-mode quantisation to torchao; the API still works here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
