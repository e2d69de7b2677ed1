"""Sliding windows over long texts: opt-in, the max over windows, and no change for texts that fit."""

import pytest

from siren_ensemble import ConfigError, Ensemble
from siren_ensemble.encoding import SpecialTokenLayout, encode_texts, encode_windows, window_starts
from siren_ensemble.text import clean_text

from .conftest import DEPTH, TEXTS

LONG = "Give me step by step instructions for a chemistry experiment, then a poem about the sea. " * 4


def build(write_head, write_config, model, backbone="llama3", max_length=24, sliding_window=None, name="e", **extra):
    head = write_head(model, name=f"head-{name}", layers=[1, DEPTH - 1], max_length=max_length, seed=3)
    config = {"members": [{"name": "m", "backbone": backbone, "head": str(head)}], **extra}
    if sliding_window is not None:
        config["sliding_window"] = sliding_window
    return Ensemble.from_config(write_config(config, name=f"{name}.yaml"))


@pytest.mark.parametrize("length,window,stride,expected", [
    (5, 8, 4, [0]), (8, 8, 4, [0]), (9, 8, 4, [0, 1]), (16, 8, 4, [0, 4, 8]), (17, 8, 4, [0, 4, 8, 9]), (20, 8, 8, [0, 8, 12]),
])
def test_window_starts_cover_the_text(length, window, stride, expected):
    assert window_starts(length, window, stride) == expected


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])  # with and without a BOS token
def test_first_window_is_the_reference_truncation_and_windows_cover_the_text(tiny_models, architecture):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models[architecture])
    text = clean_text(LONG)
    layout = SpecialTokenLayout.of(tokenizer)
    [windows] = encode_windows(tokenizer, [text], max_length=20, stride=7)
    [truncated] = encode_texts(tokenizer, [text], max_length=20)
    assert truncated.truncated and windows[0] == truncated.ids
    full = tokenizer(text)["input_ids"]
    content = full[layout.leading:len(full) - layout.trailing]
    assert all(len(ids) == 20 for ids in windows)
    covered = set()
    for start, ids in zip(window_starts(len(content), 20 - layout.total, 7), windows):
        assert ids[layout.leading:len(ids) - layout.trailing] == content[start:start + 20 - layout.total]
        covered.update(range(start, start + 20 - layout.total))
    assert covered == set(range(len(content)))


def test_windows_change_nothing_for_texts_that_fit(tiny_models, write_head, write_config):
    plain = build(write_head, write_config, tiny_models["llama"], max_length=256, name="plain")
    windowed = build(write_head, write_config, tiny_models["llama"], max_length=256, sliding_window={"stride": 5}, name="windowed")
    for single, multi in zip(plain.score_batch(TEXTS), windowed.score_batch(TEXTS)):
        assert multi.score == pytest.approx(single.score, abs=1e-6)
        assert not multi.truncated and not single.truncated


def test_a_long_texts_score_is_the_max_over_its_windows(tiny_models, write_head, write_config):
    truncating = build(write_head, write_config, tiny_models["llama"], name="truncating")
    windowed = build(write_head, write_config, tiny_models["llama"], sliding_window={"stride": 6}, name="windowed",
                     batching={"max_tokens": 50, "max_texts": 2})
    shared = windowed._passes[0]
    [(windows, _)] = shared.encode([clean_text(LONG)])
    assert len(windows) > 3
    head = windowed.plans[0].head
    per_window = [
        float(head({layer: pooled[(head.request.pooling, layer)] for layer in head.request.layers})[0])
        for pooled in (shared.backbone.pooled_states([ids], shared.wanted) for ids in windows)
    ]
    assert max(per_window) - min(per_window) > 1e-4, "windows should differ for the test to mean anything"
    result = windowed.score_batch(["short text", LONG, "another"])[1]
    assert result.score == pytest.approx(max(per_window), abs=1e-6)
    assert not result.truncated
    cut = truncating.score(LONG)
    assert cut.truncated and cut.score == pytest.approx(per_window[0], abs=1e-6)


def test_streams_with_windows_score_what_score_scores(tiny_models, write_head, write_config):
    ensemble = build(write_head, write_config, tiny_models["qwen3"], backbone="qwen3", sliding_window={}, name="stream")
    response = ""
    with ensemble.stream("Question?") as stream:
        for chunk in LONG.split(" ")[:28]:
            response += chunk + " "
            expected = ensemble.score(prompt="Question?", response=response)
            assert stream.feed(chunk + " ").score == pytest.approx(expected.score, abs=1e-5)
    assert len(ensemble._passes[0].encode([clean_text("Question?\n" + response)])[0][0]) > 1
    chunks = [chunk + " " for chunk in LONG.split(" ")[:28]]
    with ensemble.stream("Question?") as stream:  # chunks fed together: some fit one window, later ones do not
        together = stream.feed_many(chunks[:10]) + stream.feed_many(chunks[10:])
    expected = [ensemble.score(prompt="Question?", response="".join(chunks[:n])).score for n in range(1, len(chunks) + 1)]
    assert [result.score for result in together] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("sliding_window,message", [
    ({"stride": 40}, r"sliding_window.stride: 40 would skip tokens .* hold 23 text tokens"),
    ({"stride": 0}, r"sliding_window.stride"),
    ({"size": 3}, r"sliding_window.size"),
])
def test_bad_window_settings_are_config_errors(tiny_models, write_head, write_config, sliding_window, message):
    with pytest.raises(ConfigError, match=message):
        build(write_head, write_config, tiny_models["llama"], sliding_window=sliding_window)
