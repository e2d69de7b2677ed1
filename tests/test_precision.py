"""dtype: auto picks bfloat16 only where the hardware computes it natively, says why, and decides once; int8 on CPU."""

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from transformers import LlamaModel

from siren_ensemble import ConfigError, Ensemble, precision
from siren_ensemble.cli import cli
from siren_ensemble.config import EnsembleConfig, MemberConfig
from siren_ensemble.extraction import cache_keyword
from siren_ensemble.members import adapter_for
from siren_ensemble.streaming import ReEncodingStreamWarning

from .conftest import DEPTH, TEXTS


@pytest.fixture
def cpu(monkeypatch):
    """Fake CPU flags and SIREN_ENSEMBLE_CPU_BF16 (None: unset); detection starts afresh."""

    def fake(flags=(), forced=None):
        if forced is None:
            monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
        else:
            monkeypatch.setenv(precision.CPU_BF16_ENV, forced)
        precision.clear_cache()
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))

    yield fake
    precision.clear_cache()


@pytest.mark.parametrize("flags, expected, reason", [
    ({"avx2", "avx512f"}, "float32", "CPU has no native bf16 (none of avx512_bf16, amx_bf16)"),
    ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16", "CPU has avx512_bf16"),
    ({"amx_bf16", "amx_tile"}, "bfloat16", "CPU has amx_bf16"),
])
def test_auto_follows_the_cpu_flags_and_says_why(cpu, flags, expected, reason):
    cpu(flags)
    choice = precision.resolve("auto", "cpu")
    assert (choice.requested, choice.dtype, choice.reason) == ("auto", expected, reason)
    assert choice.describe() == f"{expected} (auto: {reason})"
    assert precision.resolve_dtype("auto", "cpu") == expected
    assert precision.resolve("float32", "cpu").describe() == "float32 (set in the config)"  # only auto is resolved
    assert precision.resolve_dtype("auto", "mps") == "float32"


def test_the_environment_overrides_detection(cpu):
    cpu({"avx512_bf16"}, forced="0")
    assert precision.resolve("auto", "cpu").describe() == "float32 (auto: SIREN_ENSEMBLE_CPU_BF16=0)"
    cpu(set(), forced="1")
    assert precision.resolve("auto", "cpu").describe() == "bfloat16 (auto: SIREN_ENSEMBLE_CPU_BF16=1)"


def test_the_hardware_is_probed_once(cpu, monkeypatch):
    cpu()
    reads = []
    monkeypatch.setattr(precision, "cpu_flags", lambda: reads.append(1) or frozenset({"avx512_bf16"}))
    choices = {precision.resolve("auto", "cpu") for _ in range(5)}
    assert choices == {precision.DtypeChoice("auto", "bfloat16", "CPU has avx512_bf16")} and len(reads) == 1


def test_auto_is_the_members_default():
    assert MemberConfig(name="a", backbone="llama3", head="h").dtype == "auto"


def test_a_member_with_auto_gets_a_concrete_dtype(tiny_models, cpu):
    """The spec (and so the feature cache key and the loaded weights) carries the resolved dtype, never 'auto'."""
    cpu(forced="1")
    assert adapter_for("llama3", str(tiny_models["llama"]), dtype="auto").spec.dtype == "bfloat16"
    cpu(forced="0")
    assert adapter_for("llama3", str(tiny_models["llama"]), dtype="auto").spec.dtype == "float32"


def tiny_config(tiny_models, write_head, write_config, **member_options):
    heads = {arch: write_head(tiny_models[arch], name=f"head-{arch}", layers=[0, DEPTH - 1]) for arch in ("llama", "qwen3")}
    return write_config({"members": [
        {"name": "llama", "backbone": "llama3", "head": str(heads["llama"]), **member_options},
        {"name": "qwen3", "backbone": "qwen3", "head": str(heads["qwen3"]), "dtype": "float32"},
    ]})


def test_auto_on_a_native_bf16_cpu_loads_bf16_and_every_report_says_so(tiny_models, write_head, write_config, cpu):
    cpu({"avx512_bf16"})
    path = tiny_config(tiny_models, write_head, write_config)
    ensemble = Ensemble.from_config(path)
    assert next(ensemble._passes[0].backbone.model.parameters()).dtype == torch.bfloat16
    assert {name: choice.describe() for name, choice in ensemble.precision.items()} == {
        "llama": "bfloat16 (auto: CPU has avx512_bf16)", "qwen3": "float32 (set in the config)",
    }
    assert all(0 <= result.score <= 1 for result in ensemble.score_batch(TEXTS))
    config = EnsembleConfig.from_dict({"members": [{"name": "x", "backbone": "llama3", "head": "h"}]})
    assert precision.member_dtypes(config) == {"x": precision.DtypeChoice("auto", "bfloat16", "CPU has avx512_bf16")}

    validated = CliRunner().invoke(cli, ["validate", "--config", str(path)])
    assert validated.exit_code == 0, validated.output
    assert "    dtype: bfloat16 (auto: CPU has avx512_bf16)" in validated.stdout.splitlines()
    assert "    dtype: float32 (set in the config)" in validated.stdout.splitlines()
    assert "  llama: stream: LlamaModel takes a KV cache; incremental if the loaded model proves causal " \
           "(score --verbose says)" in validated.stdout.splitlines()

    scored = CliRunner().invoke(cli, ["score", "--verbose", "--config", str(path), "hello", "there"])
    assert scored.exit_code == 0, scored.output
    keyword = cache_keyword(LlamaModel.forward)  # `cache` from transformers 5.24 on, `past_key_values` before
    assert scored.stderr.splitlines() == ["llama: dtype bfloat16 (auto: CPU has avx512_bf16)",
                                          "qwen3: dtype float32 (set in the config)",
                                          f"llama: stream incremental (KV cache passed as `{keyword}`)",
                                          f"qwen3: stream incremental (KV cache passed as `{keyword}`)"]
    assert [set(json.loads(line)) >= {"score", "members"} for line in scored.stdout.splitlines()] == [True, True]


# ---- int8 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cuda:0", "auto", "mps"])
def test_int8_is_refused_off_the_cpu_with_the_field_path(device):
    with pytest.raises(ConfigError, match=rf"members\[0\]\.dtype: dtype int8 .* runs on the CPU only, not on device '{device}'"):
        EnsembleConfig.from_dict({"members": [{"name": "a", "backbone": "llama3", "head": "h", "dtype": "int8", "device": device}]})


@pytest.mark.parametrize("architecture, backbone", [("llama", "llama3"), ("qwen3", "qwen3")])
def test_int8_quantises_every_linear_layer_and_scores_close_to_float32(tiny_models, write_head, write_config,
                                                                       architecture, backbone):
    scores = {}
    for dtype in ("float32", "int8"):
        head = write_head(tiny_models[architecture], name=f"head-{dtype}", layers=[0, 1, DEPTH - 1], pooling="mlp_mean")
        ensemble = Ensemble.from_config(write_config(
            {"members": [{"name": "m", "backbone": backbone, "head": str(head), "dtype": dtype}]}, name=f"{dtype}.yaml"))
        backbone_model = ensemble._passes[0].backbone
        linears = [module for module in backbone_model.model.modules() if isinstance(module, nn.Linear)]
        quantised = [module for module in backbone_model.model.modules()
                     if isinstance(module, torch.ao.nn.quantized.dynamic.Linear)]
        if dtype == "int8":
            assert not linears and len(quantised) == 7 * DEPTH  # q, k, v, o, gate, up, down in every block
            pooled = backbone_model.pooled_states([[1, 5, 9, 12]], ensemble._passes[0].wanted)
            assert {tensor.dtype for tensor in pooled.values()} == {torch.float32}
            assert ensemble.precision["m"].dtype == "int8"
            with pytest.warns(ReEncodingStreamWarning, match="member 'm' cannot stream incrementally.*int8"):
                stream = ensemble.stream("Q")
            with stream:  # not exactly causal: streams re-encode
                assert stream.incremental == {"m": False}
                streamed = [result.score for result in stream.feed_many([" the sea", " and", " the wind"])]
            # One activation scale per matmul spans the whole batch: a text's int8 score moves slightly with its batch.
            assert streamed == pytest.approx([ensemble.score(prompt="Q", response=response).score for response in
                                              (" the sea", " the sea and", " the sea and the wind")], abs=1e-3)
        else:
            assert linears and not quantised
        scores[dtype] = [result.score for result in ensemble.score_batch(TEXTS)]
    assert all(torch.isfinite(torch.tensor(scores["int8"])))
    assert scores["int8"] == pytest.approx(scores["float32"], abs=0.1)
    assert scores["int8"] != scores["float32"]  # the quantised weights did take part
