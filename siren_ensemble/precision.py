"""``dtype: auto``: bfloat16 where the hardware computes it natively, float32 everywhere else.

On a CPU with AVX512-BF16 or AMX, bf16 matmuls run 2-4x faster than float32 (measured in
docs/benchmarks.md); on a CPU without them PyTorch emulates bf16 and it is slower than float32.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

#: CPU flags (as /proc/cpuinfo names them) that give native bf16 matmuls.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: "1" or "0" overrides the detection (to compare both choices on one machine, or where /proc is hidden).
CPU_BF16_ENV = "SIREN_ENSEMBLE_CPU_BF16"


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
    forced = os.environ.get(CPU_BF16_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def resolve_dtype(dtype: str, device: str) -> str:
    """The concrete dtype for ``dtype`` on ``device``; only ``auto`` is resolved, once per device kind."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda") or (device == "auto" and _cuda_available()):
        return _cuda_dtype()
    if device == "mps":
        return "float32"
    return "bfloat16" if cpu_has_native_bf16() else "float32"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def _cuda_dtype() -> str:
    import torch

    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
