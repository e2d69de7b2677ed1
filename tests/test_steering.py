"""Steering: hooks that add lambda * v and come off again, the LM head, exported directions, the sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from siren_ensemble import Ensemble, gguf_cache
from siren_ensemble.cli import cli
from siren_ensemble.errors import ArtifactError, InputError
from siren_ensemble.members import adapter_for
from siren_ensemble.weights import ResolvedWeights, resolve_weights
from siren_ensemble.steering import attach, decoder_layers, steering
from siren_ensemble.steering.directions import (DIRECTIONS_CONFIG_FILE, DIRECTIONS_WEIGHTS_FILE, SteeringDirections,
                                                export_directions)
from siren_ensemble.steering.language_model import InstructModel
from siren_ensemble.steering.sweep import (SweepOptions, best_setting, distinct_bigram_share, held_out_prompts, render,
                                           run_sweep)
from siren_ensemble.testing import build_tiny_model, random_head
from siren_ensemble.training.feature_cache import FeatureExtractor

from .conftest import DEPTH, HIDDEN


@pytest.fixture(scope="module")
def instruct(tiny_models):
    return InstructModel.load(adapter_for("llama3", str(tiny_models["llama"])))


@pytest.fixture(scope="module")
def tokens(instruct):
    return torch.tensor([instruct.tokenizer("How do I bake bread at home?")["input_ids"]])


def logits(model, tokens):
    with torch.inference_mode():
        return model(input_ids=tokens).logits


def block_outputs(model, tokens) -> dict[int, torch.Tensor]:
    """Each block's output as the next module sees it (hooks registered after any steering hook)."""
    seen, handles = {}, []
    for index, block in enumerate(decoder_layers(model)):
        handles.append(block.register_forward_hook(
            lambda _m, _a, output, index=index: seen.__setitem__(index, (output[0] if isinstance(output, tuple) else output).clone())))
    try:
        logits(model, tokens)
    finally:
        for handle in handles:
            handle.remove()
    return seen


# ---- hooks -------------------------------------------------------------------------------------------------


def test_the_hook_adds_exactly_lambda_times_v_at_the_chosen_layer(instruct, tokens):
    vector = torch.randn(HIDDEN)
    before = block_outputs(instruct.model, tokens)
    with steering(instruct.model, {1: vector}, 2.5):
        after = block_outputs(instruct.model, tokens)
    assert torch.equal(after[0], before[0])  # below the steered layer nothing changes
    # The steered block's own input is unchanged, so its output moves by exactly lambda * v.
    assert torch.allclose(after[1] - before[1], (2.5 * vector).expand_as(before[1]), atol=1e-5)
    assert not torch.allclose(after[2], before[2])


def test_hooks_come_off_after_the_context_even_on_an_exception(instruct, tokens):
    reference = logits(instruct.model, tokens)
    with steering(instruct.model, {0: torch.randn(HIDDEN), 2: torch.randn(HIDDEN)}, 4.0):
        assert not torch.equal(logits(instruct.model, tokens), reference)
    assert torch.equal(logits(instruct.model, tokens), reference)
    with pytest.raises(RuntimeError, match="boom"):
        with steering(instruct.model, {1: torch.randn(HIDDEN)}, 4.0):
            raise RuntimeError("boom")
    assert torch.equal(logits(instruct.model, tokens), reference)
    assert all(not block._forward_hooks for block in decoder_layers(instruct.model))


def test_lambda_zero_equals_the_unsteered_logits(instruct, tokens):
    reference = logits(instruct.model, tokens)
    with steering(instruct.model, {layer: torch.randn(HIDDEN) for layer in range(DEPTH)}, 0.0):
        assert torch.equal(logits(instruct.model, tokens), reference)


def test_attach_and_detach_by_hand(instruct, tokens):
    reference = logits(instruct.model, tokens)
    handle = attach(instruct.model, {3: torch.randn(HIDDEN)}, 1.0)
    assert not torch.equal(logits(instruct.model, tokens), reference)
    handle.remove()
    handle.remove()
    assert torch.equal(logits(instruct.model, tokens), reference)


@pytest.mark.parametrize("vectors, scale, message", [
    ({1: torch.zeros(HIDDEN)}, float("nan"), "lambda: expected a finite number, got nan"),
    ({1: torch.zeros(HIDDEN)}, "2", "lambda: expected a finite number, got '2'"),
    ({1: torch.zeros(HIDDEN)}, True, "lambda: expected a finite number, got True"),
    ({DEPTH: torch.zeros(HIDDEN)}, 1.0, f"layer {DEPTH}: out of range; the model has {DEPTH} decoder layers \\(0-{DEPTH - 1}\\)"),
    ({-1: torch.zeros(HIDDEN)}, 1.0, "layer -1: out of range"),
    ({1: torch.zeros(HIDDEN + 1)}, 1.0, f"the vector has shape \\({HIDDEN + 1},\\), the model's states \\({HIDDEN},\\)"),
    ({}, 1.0, "no layer given"),
])
def test_bad_steering_requests_are_refused(instruct, vectors, scale, message):
    with pytest.raises(InputError, match=message):
        attach(instruct.model, vectors, scale)
    assert all(not block._forward_hooks for block in decoder_layers(instruct.model))


# ---- the LM head ---------------------------------------------------------------------------------------------


def test_the_language_model_has_the_saved_lm_head(instruct, tiny_models):
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]))
    assert torch.equal(instruct.model.get_output_embeddings().weight, saved.get_output_embeddings().weight)


def test_a_base_model_without_a_tied_lm_head_is_refused(tmp_path):
    from transformers import AutoModel

    directory = build_tiny_model(tmp_path / "tied", "qwen2", tie_word_embeddings=False)
    AutoModel.from_pretrained(str(directory)).save_pretrained(str(tmp_path / "base"))  # no lm_head.weight
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "base" / name).write_bytes((directory / name).read_bytes())
    with pytest.raises(ArtifactError, match="cannot load the LM head of .*lm_head.weight missing"):
        adapter = adapter_for("qwen3", str(tmp_path / "base"))
        adapter.load_language_model(resolve_weights(adapter.spec.weights))


def test_a_gguf_members_lm_head_comes_from_its_own_output_tensor(tmp_path, monkeypatch):
    from transformers import AutoModel

    from siren_ensemble.backbones.base import BackboneSpec
    from siren_ensemble.backbones.qwen import Qwen3Adapter

    directory = build_tiny_model(tmp_path / "full", "qwen2", tie_word_embeddings=False)
    AutoModel.from_pretrained(str(directory)).save_pretrained(str(tmp_path / "converted"))  # as the GGUF conversion saves it
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "converted" / name).write_bytes((directory / name).read_bytes())
    adapter = Qwen3Adapter(BackboneSpec(adapter="qwen3", model="model.gguf", gguf_parts=(str(tmp_path / "model.gguf"),)))
    # What resolve_weights gives for a converted GGUF: the converted copy, and the GGUF for its own output tensor.
    weights = ResolvedWeights("gguf-converted", str(tmp_path / "converted"), gguf=gguf_cache.GGUFSource((tmp_path / "model.gguf",)))
    vocabulary = adapter.load_config(weights).vocab_size
    own_head = torch.randn(vocabulary, HIDDEN)
    monkeypatch.setattr(gguf_cache, "output_weights", lambda source: own_head)
    model = adapter.load_language_model(weights)
    assert torch.equal(model.get_output_embeddings().weight, own_head)
    assert not torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)
    monkeypatch.setattr(gguf_cache, "output_weights", lambda source: own_head[:, :-1])
    with pytest.raises(ArtifactError, match=rf"output tensor has shape \({vocabulary}, {HIDDEN - 1}\)"):
        adapter.load_language_model(weights)
    monkeypatch.setattr(gguf_cache, "output_weights", lambda source: None)  # no output tensor, and the config does not tie
    with pytest.raises(ArtifactError, match="lm_head.weight missing"):
        adapter.load_language_model(weights)


def write_gguf(path, with_output: bool) -> np.ndarray:
    import gguf
    from gguf.quants import quantize

    weight = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", weight)
    if with_output:
        quantized = quantize(weight, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor("output.weight", quantized, raw_shape=quantized.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weight


@pytest.mark.parametrize("parts", [1, 3])
def test_a_ggufs_own_lm_head_is_read_once_beside_the_converted_copy(tmp_path, monkeypatch, parts):
    path = tmp_path / "model.gguf"
    weight = write_gguf(path, with_output=True)
    data = path.read_bytes()
    pieces = [tmp_path / f"part{i}" for i in range(parts)]
    for index, piece in enumerate(pieces):
        piece.write_bytes(data[index * len(data) // parts:(index + 1) * len(data) // parts])
    source = gguf_cache.GGUFSource(tuple(pieces))
    target = tmp_path / "cache" / source.digest()
    target.mkdir(parents=True)
    monkeypatch.setattr(gguf_cache, "converted", lambda _source: target)
    head = gguf_cache.output_weights(source)
    assert head.dtype == gguf_cache.CACHE_DTYPE and tuple(head.shape) == (10, 64)
    assert np.abs(head.float().numpy() - weight).max() < 0.05  # Q8_0, then bf16
    assert (target / gguf_cache.LM_HEAD_FILE).is_file()
    for piece in pieces:
        piece.unlink()  # the second read comes from the stored copy
    assert torch.equal(gguf_cache.output_weights(source), head)


def test_a_gguf_without_an_output_tensor_ties_its_lm_head(tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    write_gguf(path, with_output=False)
    monkeypatch.setattr(gguf_cache, "converted", lambda _source: tmp_path)
    assert gguf_cache.output_weights(gguf_cache.GGUFSource((path,))) is None


# ---- generation -------------------------------------------------------------------------------------------------


def test_generation_and_perplexity(instruct):
    prompts = ["How do I bake bread?", "Write a poem about the sea and the wind, please."]
    generations = instruct.generate(prompts, max_new_tokens=5, batch_size=2)
    assert [len(item.response_ids) <= 5 for item in generations] == [True, True]
    one_by_one = [instruct.generate([prompt], max_new_tokens=5)[0] for prompt in prompts]
    assert [item.response_ids for item in generations] == [item.response_ids for item in one_by_one]  # left padding is masked
    perplexities = instruct.perplexities(generations)
    assert perplexities == pytest.approx(instruct.perplexities(one_by_one, batch_size=1), rel=1e-4)
    # Only the answers' logits are computed; the result equals the perplexity from every position's logits.
    for item, value in zip(generations, perplexities):
        if not item.response_ids:
            continue
        ids = torch.tensor([item.prompt_ids + item.response_ids])
        with torch.no_grad():
            log_probabilities = torch.log_softmax(instruct.model(input_ids=ids).logits.float()[0, :-1], dim=-1)
        count = len(item.response_ids)
        nll = -log_probabilities[-count:].gather(-1, ids[0, -count:, None]).mean()
        assert value == pytest.approx(float(torch.exp(nll)), rel=1e-4)
    with steering(instruct.model, {1: torch.randn(HIDDEN)}, 0.0):
        assert [item.response_ids for item in instruct.generate(prompts, max_new_tokens=5)] == \
               [item.response_ids for item in generations]


# ---- directions ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def directions(tiny_models, synthetic_data, trained_heads) -> SteeringDirections:
    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=64, cache_dir=trained_heads["cache"])
    return export_directions(extractor, synthetic_data, layers=[1, 2])


def test_exported_directions_are_unit_vectors_with_their_numbers(directions):
    assert [entry.layer for entry in directions.config.layers] == [1, 2]
    for kind in ("probe", "mean_difference"):
        for layer in (1, 2):
            assert float(directions.vectors[kind][layer].norm()) == pytest.approx(1.0, abs=1e-5)
    entry = directions.layer(1)
    assert entry.mean_difference_norm > 0 and 0 <= entry.probe_f1 <= 1 and -1 <= entry.cosine <= 1
    scaled = directions.steering_vectors("mean_difference", [1], unit="gap")[1]
    assert float(scaled.norm()) == pytest.approx(entry.mean_difference_norm, rel=1e-5)
    # projected_gap: the class gap measured along the direction (all of it for the mean difference's own direction).
    assert torch.allclose(directions.steering_vectors("mean_difference", [1], unit="projected_gap")[1], scaled)
    projected = directions.steering_vectors("probe", [1], unit="projected_gap")[1]
    assert float(projected.norm()) == pytest.approx(entry.mean_difference_norm * abs(entry.cosine), rel=1e-4)
    with pytest.raises(InputError, match="lambda unit: expected one of gap, projected_gap, absolute, got 'sigma'"):
        directions.steering_vectors("probe", [1], unit="sigma")
    with pytest.raises(InputError, match=r"layer 3: no direction exported for it .*\(layers 1, 2\)"):
        directions.layer(3)


def test_directions_round_trip_and_strict_load(directions, tmp_path):
    directions.save(tmp_path / "ok")
    loaded = SteeringDirections.load(tmp_path / "ok")
    assert loaded.config == directions.config
    assert all(torch.equal(loaded.vectors[k][l], directions.vectors[k][l]) for k in loaded.vectors for l in (1, 2))

    def damaged(name, edit):
        directory = tmp_path / name
        directions.save(directory)
        edit(directory)
        return directory

    from safetensors.torch import load_file, save_file

    config_path = lambda d: d / DIRECTIONS_CONFIG_FILE  # noqa: E731
    cases = [
        (lambda d: config_path(d).write_text(config_path(d).read_text().replace('"pooling"', '"poolng"')),
         "poolng: unknown field; did you mean 'pooling'"),
        (lambda d: save_file({k: v * 2 for k, v in load_file(str(d / DIRECTIONS_WEIGHTS_FILE)).items()}, str(d / DIRECTIONS_WEIGHTS_FILE)),
         "is not a unit vector"),
        (lambda d: save_file({k: v for k, v in load_file(str(d / DIRECTIONS_WEIGHTS_FILE)).items() if "layer2" not in k},
                             str(d / DIRECTIONS_WEIGHTS_FILE)), "missing: \\['mean_difference.layer2', 'probe.layer2'\\]"),
        (lambda d: (d / DIRECTIONS_WEIGHTS_FILE).unlink(), "directions.safetensors: missing"),
    ]
    for index, (edit, message) in enumerate(cases):
        with pytest.raises(ArtifactError, match=message):
            SteeringDirections.load(damaged(f"bad{index}", edit))


# ---- the sweep ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def judge(tiny_models, tmp_path_factory):
    head = random_head(str(tiny_models["qwen3"]), layers=[0, 2], hidden_size=HIDDEN, max_length=64).save(
        tmp_path_factory.mktemp("judge") / "head")
    return Ensemble.from_config(_config(tmp_path_factory.mktemp("judge-config"), "judge", "qwen3", tiny_models["qwen3"], head))


def _config(directory, name, backbone, model, head):
    path = directory / "ensemble.yaml"
    path.write_text(yaml.safe_dump({"members": [{"name": name, "backbone": backbone, "model": str(model), "head": str(head)}]}))
    return path


def test_held_out_prompts_are_a_seeded_sample_of_the_split(synthetic_data):
    prompts = held_out_prompts(synthetic_data, "test", 3, 2, seed=0)
    assert (len(prompts.harmful), len(prompts.benign)) == (3, 2)
    assert prompts == held_out_prompts(synthetic_data, "test", 3, 2, seed=0)
    with pytest.raises(InputError, match="fewer than the 10000 asked for"):
        held_out_prompts(synthetic_data, "test", 10000, 2, seed=0)


def test_a_looping_answer_is_not_fluent_even_at_a_low_perplexity():
    assert distinct_bigram_share([5, 6, 7, 8]) == 1.0
    assert distinct_bigram_share([9] * 11) == pytest.approx(0.1)

    def setting(value, perplexity, distinct, harmful_refusal):
        return {"lambda": value, "layers": [1], "perplexity": {"median": perplexity}, "distinct_bigrams": distinct,
                "harmful_prompts": {"refusal_rate_phrases": harmful_refusal}, "benign_prompts": {"refusal_rate_phrases": 0.0}}

    unsteered = setting(0.0, 2.0, 0.9, 0.0)
    looping = setting(4.0, 1.5, 0.1, 0.5)    # more "refusals", a lower perplexity, but a loop
    fluent = setting(2.0, 2.5, 0.85, 0.2)
    assert best_setting([unsteered, looping, fluent], max_perplexity_ratio=2.0)["lambda"] == 2.0
    assert best_setting([unsteered, looping], max_perplexity_ratio=2.0) is None


def test_the_sweep_measures_every_setting_and_the_unsteered_model(instruct, directions, judge, synthetic_data):
    prompts = held_out_prompts(synthetic_data, "test", 2, 2, seed=0)
    options = SweepOptions(lambdas=(1.0, 4.0), layer_sets=((1,), (1, 2)), harmful=2, benign=2, max_new_tokens=4, batch_size=4)
    report = run_sweep(instruct, directions, judge, prompts, options)
    assert [(s["lambda"], s["layers"]) for s in report["settings"]] == [(0.0, []), (1.0, [1]), (4.0, [1]), (1.0, [1, 2]), (4.0, [1, 2])]
    unsteered = report["settings"][0]
    assert set(unsteered["harmful_prompts"]) == {"refusal_rate_phrases", "safe_rate_ensemble"}
    assert set(unsteered["benign_prompts"]) == {"refusal_rate_phrases", "flagged_rate_ensemble"}
    assert len(unsteered["examples"]["harmful"]) == 2
    assert unsteered["distinct_bigrams"] is None or 0 < unsteered["distinct_bigrams"] <= 1
    assert "unsteered" in render(report)
    with pytest.raises(InputError, match=f"layer {DEPTH}: out of range; the model has {DEPTH} decoder layers"):
        run_sweep(instruct, directions, judge, prompts, SweepOptions(layer_sets=((DEPTH,),)))
    with pytest.raises(InputError, match="lambda: expected a finite number"):
        run_sweep(instruct, directions, judge, prompts, SweepOptions(lambdas=(float("inf"),), layer_sets=((1,),)))


def test_steer_commands_export_and_evaluate(tiny_models, synthetic_data, trained_heads, tmp_path):
    head = random_head(str(tiny_models["llama"]), layers=[1], hidden_size=HIDDEN, max_length=64).save(tmp_path / "head")
    config = _config(tmp_path, "tiny", "llama3", tiny_models["llama"], head)
    runner = CliRunner()
    result = runner.invoke(cli, ["steer", "export", "--config", str(config), "--member", "tiny", "--data", str(synthetic_data),
                                 "--out", str(tmp_path / "directions"), "--layers", "1-2", "--max-length", "64",
                                 "--cache-dir", str(trained_heads["cache"])])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["layer"] for line in result.stdout.splitlines()] == [1, 2]
    (tmp_path / "judge").mkdir()
    judge_config = _config(tmp_path / "judge", "judge", "llama3", tiny_models["llama"], head)
    result = runner.invoke(cli, ["steer", "evaluate", "--config", str(config), "--member", "tiny", "--directions",
                                 str(tmp_path / "directions"), "--data", str(synthetic_data), "--out", str(tmp_path / "sweep"),
                                 "--lambdas", "2", "--layers", "1", "--layers", "1-2", "--harmful", "2", "--benign", "2",
                                 "--max-new-tokens", "3", "--judge-config", str(judge_config)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "sweep" / "steering.json").read_text())
    assert len(report["settings"]) == 3 and (tmp_path / "sweep" / "steering.png").is_file()
    result = runner.invoke(cli, ["steer", "evaluate", "--config", str(config), "--member", "tiny", "--directions",
                                 str(tmp_path / "directions"), "--data", str(synthetic_data), "--out", str(tmp_path / "bad"),
                                 "--lambdas", "2,x", "--layers", "1"])
    assert result.exit_code == 2 and "--lambdas: expected comma-separated numbers" in result.output
