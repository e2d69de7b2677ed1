"""dtype: auto picks bfloat16 only where the hardware computes it natively."""

import pytest

from siren_ensemble import precision
from siren_ensemble.members import adapter_for


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f"}, "float32"),
    ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
    ({"amx_bf16", "amx_tile"}, "bfloat16"),
])
def test_auto_follows_the_cpu_flags(monkeypatch, flags, expected):
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.resolve_dtype("auto", "cpu") == expected
    assert precision.resolve_dtype("float32", "cpu") == "float32"  # only auto is resolved
    assert precision.resolve_dtype("auto", "mps") == "float32"


def test_the_environment_overrides_detection(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert precision.resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert precision.resolve_dtype("auto", "cpu") == "bfloat16"


def test_a_member_with_auto_gets_a_concrete_dtype(tiny_models, monkeypatch):
    """The spec (and so the feature cache key and the loaded weights) carries the resolved dtype, never 'auto'."""
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert adapter_for("llama3", str(tiny_models["llama"]), dtype="auto").spec.dtype == "bfloat16"
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert adapter_for("llama3", str(tiny_models["llama"]), dtype="auto").spec.dtype == "float32"
