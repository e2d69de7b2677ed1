"""Members on different devices run side by side and score exactly what they score one after another."""

import threading

import pytest
import torch

from siren_ensemble import Ensemble
from siren_ensemble import ensemble as ensemble_module

from .conftest import DEPTH, TEXTS


def three_members(tiny_models, write_head, devices=("cpu", "cpu", "cpu")):
    heads = [
        write_head(tiny_models["llama"], name="a", layers=[0, 2], seed=1),
        write_head(tiny_models["llama"], name="b", layers=[1, DEPTH - 1], pooling="mlp_mean", seed=2),
        write_head(tiny_models["qwen3"], name="c", layers=[1, 3], seed=3),
    ]
    return [
        {"name": name, "backbone": backbone, "head": str(head), "device": device}
        for name, backbone, head, device in zip("abc", ["llama3", "llama3", "qwen3"], heads, devices)
    ]


def test_passes_on_different_devices_run_in_their_own_threads_with_the_same_scores(tiny_models, write_head, write_config, monkeypatch):
    ensemble = Ensemble.from_config(write_config({"members": three_members(tiny_models, write_head), "batching": {"max_tokens": 60, "max_texts": 3}}))
    texts = TEXTS * 2
    sequential = ensemble.score_batch(texts)

    threads = {}
    for shared in ensemble._passes:
        shared.backbone.model.register_forward_pre_hook(
            lambda module, _args: threads.setdefault(id(module), set()).add(threading.current_thread().name)
        )
    # Pretend each loaded backbone sits on a device of its own.
    monkeypatch.setattr(ensemble_module, "_device_key", lambda shared: str(id(shared.backbone)))
    concurrent = ensemble.score_batch(texts)

    assert len(threads) == 2 and all(name.startswith("siren-device") for names in threads.values() for name in names)
    assert len(set().union(*threads.values())) == 2  # one thread per device
    for before, after in zip(sequential, concurrent):
        assert after.members == pytest.approx(before.members, abs=1e-6)
        assert after.score == pytest.approx(before.score, abs=1e-6)


def test_a_failing_device_fails_closed_without_stopping_the_others(tiny_models, write_head, write_config, monkeypatch):
    ensemble = Ensemble.from_config(write_config({"members": three_members(tiny_models, write_head)}))
    monkeypatch.setattr(ensemble_module, "_device_key", lambda shared: str(id(shared.backbone)))
    qwen = next(shared for shared in ensemble._passes if shared.backbone.spec.adapter == "qwen3").backbone

    def broken(*_args, **_kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(qwen, "pooled_states", broken)
    result = ensemble.score("hello there")
    assert result.score == 1.0 and set(result.errors) == {"c"}
    assert result.members["a"] is not None and result.members["b"] is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_members_on_gpu_and_cpu_run_concurrently_and_match_cpu(tiny_models, write_head, write_config):
    on_cpu = Ensemble.from_config(write_config({"members": three_members(tiny_models, write_head)}, name="cpu.yaml"))
    mixed = Ensemble.from_config(write_config({"members": three_members(tiny_models, write_head, ("cuda:0", "cuda:0", "cpu"))}, name="mixed.yaml"))
    assert {ensemble_module._device_key(shared) for shared in mixed._passes} == {"cuda:0", "cpu"}
    for expected, result in zip(on_cpu.score_batch(TEXTS), mixed.score_batch(TEXTS)):
        assert result.score == pytest.approx(expected.score, abs=1e-4)
