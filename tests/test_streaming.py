"""Streams score exactly what a full re-encode of the prompt and the response so far scores."""

import warnings

import pytest

from siren_ensemble import Ensemble, SirenError
from siren_ensemble import streaming
from siren_ensemble.extraction import CACHE_KEYWORDS, cache_keyword
from siren_ensemble.streaming import ReEncodingStreamWarning, StreamClosedError

from .conftest import DEPTH

PROMPT = "<|im_start|>user\nHow do I bake bread at home?<|im_end|>"
# Boundaries inside words, whitespace-only and empty chunks, a chat marker split across chunks,
# runs of newlines that cleaning squeezes, and trailing spaces that cleaning strips.
CHUNKS = [
    "Sure", "! Here", " is", " a ", "", "   ", "rec", "ipe", ":\n", "\n", "\n\n", "1. Mix fl", "our and wa",
    "ter.\t", " ", "<|im_", "end|>", " 2. K", "nead", " the dough for 10 min", "utes.", "", "\n\n\n\n",
    "Bake at 220 degrees", " until golden.", " <|eot_id|>", " Enjoy", " your bread", "!",
]

HEADS = [
    ("llama", "llama3", "residual_mean", [0, 2]),
    ("llama", "llama3", "residual_mean", [1, DEPTH - 1]),  # the last layer reads last_hidden_state
    ("llama", "llama3", "mlp_mean", [0, DEPTH - 1]),
    ("qwen3", "qwen3", "residual_mean", [0, 1, 2, DEPTH - 1]),
    ("qwen3", "qwen3", "mlp_mean", [1, 2]),
]


def ensemble_for(write_head, write_config, model, backbone, name="m", **head_options):
    head = write_head(model, name=f"head-{name}", **head_options)
    # float32: a stream must equal re-scoring to 1e-5, whatever `dtype: auto` picks on this machine.
    member = {"name": name, "backbone": backbone, "head": str(head), "dtype": "float32"}
    return Ensemble.from_config(write_config({"members": [member]}, name=f"{name}.yaml"))


def assert_stream_matches_rescoring(ensemble, prompt, chunks, stream_kwargs=None, together=1):
    """Feed ``chunks`` (``together`` at a time, through feed_many) and compare every answer with re-scoring."""
    response = ""
    with ensemble.stream(prompt, **(stream_kwargs or {})) as stream:
        for start in range(0, len(chunks), together):
            group = chunks[start:start + together]
            answers = stream.feed_many(group) if together > 1 else [stream.feed(group[0])]
            assert len(answers) == len(group)
            for index, (chunk, streamed) in enumerate(zip(group, answers), start):
                response += chunk
                rescored = ensemble.score(prompt=prompt, response=response) if (prompt or response) else ensemble.score("")
                assert streamed.score == pytest.approx(rescored.score, abs=1e-5), f"after chunk {index} ({chunk!r})"
                for name, value in rescored.members.items():
                    assert streamed.members[name] == pytest.approx(value, abs=1e-5), f"member {name}, chunk {index}"
                assert streamed.truncated == rescored.truncated
    return stream


@pytest.mark.parametrize("together", [1, 3, len(CHUNKS)], ids=["one-by-one", "three-together", "all-together"])
@pytest.mark.parametrize("architecture,backbone,pooling,layers", HEADS)
def test_stream_equals_rescoring_after_every_chunk(tiny_models, write_head, write_config, architecture, backbone, pooling,
                                                   layers, together):
    ensemble = ensemble_for(write_head, write_config, tiny_models[architecture], backbone, layers=layers, pooling=pooling)
    scores = [ensemble.score(prompt=PROMPT, response="".join(CHUNKS[:n])).score for n in (1, 10, len(CHUNKS))]
    assert len({round(score, 6) for score in scores}) > 1, "scores should move as the response grows"
    stream = assert_stream_matches_rescoring(ensemble, PROMPT, CHUNKS, together=together)
    assert stream.incremental == {"m": True}


@pytest.mark.parametrize("architecture,backbone", [("llama", "llama3"), ("qwen3", "qwen3")])
def test_chunks_that_arrive_together_cost_one_forward_step(tiny_models, write_head, write_config, architecture, backbone):
    """Chunks ending at word boundaries tokenise as prefixes of each other: one step answers them all, exactly."""
    ensemble = ensemble_for(write_head, write_config, tiny_models[architecture], backbone, layers=[0, 2, DEPTH - 1])
    words = [f" {word}" for word in "the sea and the wind write a short poem about bread at home".split()]
    assert_stream_matches_rescoring(ensemble, "Q", words, together=len(words))
    with ensemble.stream("Q") as stream:
        stream.feed_many(words)
        pooler = stream._passes[0]._pooler
        assert (pooler.steps_run, pooler.tokens_run) == (1, len(pooler.ids))
        stream.feed_many(words[:3])  # and more, from the cache
        assert (pooler.steps_run, pooler.tokens_run) == (2, len(pooler.ids))


def test_chunks_ending_inside_words_split_the_run_but_stay_exact(tiny_models, write_head, write_config):
    ensemble = ensemble_for(write_head, write_config, tiny_models["llama"], "llama3", layers=[0, 2])
    with ensemble.stream(PROMPT) as stream:
        stream.feed_many(CHUNKS)
        pooler = stream._passes[0]._pooler
        assert 1 < pooler.steps_run < len(CHUNKS)


def test_feed_many_of_nothing_and_bad_chunks(tiny_models, write_head, write_config):
    ensemble = ensemble_for(write_head, write_config, tiny_models["llama"], "llama3")
    with ensemble.stream("Q") as stream:
        assert stream.feed_many([]) == []
        with pytest.raises(SirenError, match=r"chunks\[1\]: expected a string, got int"):
            stream.feed_many(["a", 3])
        with pytest.raises(SirenError, match="chunks: expected a list of strings, got str"):
            stream.feed_many("abc")
        assert stream.text == "Q"  # a refused call appends nothing


def test_the_kv_cache_is_written_in_place(tiny_models, write_head, write_config):
    from siren_ensemble.kv_cache import FIRST_CAPACITY, PreallocatedLayer

    ensemble = ensemble_for(write_head, write_config, tiny_models["qwen3"], "qwen3", layers=[0, 3])
    with ensemble.stream("Q") as stream:
        stream.feed(" the sea")
        pooler = stream._passes[0]._pooler
        layers = pooler._cache.layers
        assert len(layers) == DEPTH and all(type(layer) is PreallocatedLayer for layer in layers)
        buffers = [layer._key_buffer.data_ptr() for layer in layers]
        while len(pooler.ids) < FIRST_CAPACITY - 8:
            stream.feed(" and the wind")
        assert [layer._key_buffer.data_ptr() for layer in layers] == buffers  # no copy while there is room
        assert all(layer.keys.data_ptr() == layer._key_buffer.data_ptr() for layer in layers)  # a view, not a copy
        while len(pooler.ids) < FIRST_CAPACITY + 8:
            stream.feed(" and the wind")
        assert all(layer._key_buffer.shape[-2] == 2 * FIRST_CAPACITY for layer in layers)  # grown by doubling
        assert pooler._cache.get_seq_length() == len(pooler.ids)


def test_without_prompt_and_from_an_empty_start(tiny_models, write_head, write_config):
    ensemble = ensemble_for(write_head, write_config, tiny_models["llama"], "llama3", layers=[1, 2])
    assert_stream_matches_rescoring(ensemble, None, ["", " ", "Hel", "lo", " wor", "ld"])


def test_each_chunk_costs_only_its_new_tokens(tiny_models, write_head, write_config):
    ensemble = ensemble_for(write_head, write_config, tiny_models["llama"], "llama3", layers=[0, 2])
    chunks = [f" word{index} and more" for index in range(40)]
    with ensemble.stream("A prompt.") as stream:
        for chunk in chunks:
            stream.feed(chunk)
        pooler = stream._passes[0]._pooler
        final_length = len(pooler.ids)
        # A re-encode per chunk would run about chunks x length / 2 tokens; rollbacks at the
        # boundary add at most a few tokens per chunk.
        assert final_length <= pooler.tokens_run <= final_length + 3 * len(chunks)


@pytest.mark.parametrize("architecture,backbone", [("llama", "llama3"), ("qwen3", "qwen3"), ("qwen2", "hf"), ("gpt2", "hf")])
def test_causal_backbones_never_silently_stop_streaming_incrementally(tiny_models, write_head, write_config, architecture,
                                                                      backbone):
    """Guards the installed transformers: a renamed cache argument once made every stream re-encode without a word."""
    ensemble = ensemble_for(write_head, write_config, tiny_models[architecture], backbone, layers=[0, DEPTH - 1])
    model = ensemble._passes[0].backbone.model
    support = ensemble.stream_support()["m"]
    assert support.incremental, support.reason
    assert support.cache_keyword in CACHE_KEYWORDS and support.cache_keyword == cache_keyword(model.forward)
    chunks = [f" word{index} and more" for index in range(12)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReEncodingStreamWarning)
        with ensemble.stream("A prompt.") as stream:
            for chunk in chunks:
                stream.feed(chunk)
            pooler = stream._passes[0]._pooler
            assert pooler is not None, "the stream re-encoded instead of keeping a KV cache"
            assert len(pooler.ids) <= pooler.tokens_run <= len(pooler.ids) + 3 * len(chunks)
            assert pooler.steps_run == len(chunks)


@pytest.mark.parametrize("together", [1, 2, 6])
def test_divergence_beyond_the_rollback_window_starts_over_and_stays_exact(tiny_models, write_head, write_config, monkeypatch,
                                                                          together):
    monkeypatch.setattr(streaming, "ROLLBACK_POSITIONS", 1)
    ensemble = ensemble_for(write_head, write_config, tiny_models["qwen3"], "qwen3", layers=[0, 3])
    # A chat marker completed by the next chunk turns several tokens into a single space.
    chunks = ["Hello <|im", "_start", "|> there", "<|eot", "_id|>", " friend"]
    assert_stream_matches_rescoring(ensemble, "Hi", chunks, together=together)


def test_max_length_scores_the_first_tokens_like_the_reference(tiny_models, write_head, write_config):
    ensemble = ensemble_for(write_head, write_config, tiny_models["llama"], "llama3", layers=[0, DEPTH - 1], max_length=12)
    stream = assert_stream_matches_rescoring(ensemble, "Tell me", [" a", " long", " story", " about", " the sea"] + [" and more"] * 6)
    assert ensemble.score(prompt="Tell me", response=" a long story about the sea and more").truncated
    assert stream.closed and stream._passes is None  # closing dropped the cache


def test_a_streams_cache_never_holds_more_than_max_length_tokens(tiny_models, write_head, write_config):
    ensemble = ensemble_for(write_head, write_config, tiny_models["llama"], "llama3", layers=[0, DEPTH - 1], max_length=12)
    with ensemble.stream("Tell me") as stream:
        for _ in range(20):
            stream.feed(" and more words")
            pooler = stream._passes[0]._pooler
            assert len(pooler.ids) <= 12 and pooler._cache.get_seq_length() <= 12
            assert all(layer._key_buffer.shape[-2] <= 12 for layer in pooler._cache.layers)  # the buffers too
        assert pooler.tokens_run <= 12 + 3 * 20


@pytest.mark.parametrize("together", [1, 5])
def test_several_members_and_backbones_in_one_stream(tiny_models, write_head, write_config, together):
    heads = [
        write_head(tiny_models["llama"], name="a", layers=[0, 2], seed=1),
        write_head(tiny_models["llama"], name="b", layers=[1, DEPTH - 1], pooling="mlp_mean", seed=2),
        write_head(tiny_models["llama"], name="c", layers=[1], max_length=10, seed=3),
        write_head(tiny_models["qwen3"], name="d", layers=[2, 3], seed=4),
    ]
    backbones = ["llama3", "llama3", "llama3", "qwen3"]
    ensemble = Ensemble.from_config(write_config({
        "members": [{"name": n, "backbone": b, "head": str(h), "dtype": "float32"} for n, b, h in zip("abcd", backbones, heads)],
        "combiner": {"type": "max"},
    }))
    assert_stream_matches_rescoring(ensemble, PROMPT, CHUNKS[:12], together=together)
    assert len(ensemble._passes) == 3


def test_encoder_backbones_re_encode_and_say_so(tiny_models, write_head, write_config):
    ensemble = ensemble_for(write_head, write_config, tiny_models["bert"], "hf", layers=[0, 2])
    with pytest.warns(ReEncodingStreamWarning, match="member 'm' cannot stream incrementally.*not causal"):
        stream = ensemble.stream("Q")
    with stream:
        assert stream.incremental == {"m": False}
        assert "not causal" in stream.support["m"].reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per member, not at every stream
        ensemble.stream("Q").close()
    assert_stream_matches_rescoring(ensemble, "Q", CHUNKS[:8])
    assert_stream_matches_rescoring(ensemble, "Q", CHUNKS[:8], together=4)  # re-encoded as one batch


def test_gpt2_through_the_hf_adapter_streams_incrementally(tiny_models, write_head, write_config):
    ensemble = ensemble_for(write_head, write_config, tiny_models["gpt2"], "hf", layers=[0, DEPTH - 1])
    stream = assert_stream_matches_rescoring(ensemble, PROMPT, CHUNKS[:10])
    assert stream.incremental == {"m": True}
    assert_stream_matches_rescoring(ensemble, PROMPT, CHUNKS[:10], together=5)


def test_closed_streams_refuse_to_be_fed(tiny_models, write_head, write_config):
    ensemble = ensemble_for(write_head, write_config, tiny_models["llama"], "llama3")
    with ensemble.stream() as stream:
        stream.feed("hello")
    assert stream.closed
    with pytest.raises(StreamClosedError, match="stream is closed"):
        stream.feed("more")
    assert issubclass(StreamClosedError, SirenError)
    stream.close()  # closing twice is harmless


@pytest.mark.parametrize("call,message", [
    (lambda e: e.stream(prompt=3), "prompt: expected a string, got int"),
    (lambda e: e.stream(threshold=2), "threshold: expected a number between 0 and 1"),
    (lambda e: e.stream().feed(None), "chunk: expected a string, got NoneType"),
])
def test_bad_stream_input_is_a_clear_error(tiny_models, write_head, write_config, call, message):
    ensemble = ensemble_for(write_head, write_config, tiny_models["llama"], "llama3")
    with pytest.raises(SirenError, match=message):
        call(ensemble)


def test_a_failing_forward_fails_closed_and_the_next_feed_recovers(tiny_models, write_head, write_config, monkeypatch):
    ensemble = ensemble_for(write_head, write_config, tiny_models["llama"], "llama3", layers=[0, 2])
    backbone = ensemble._passes[0].backbone
    original = backbone.run_hooked
    with ensemble.stream("Q", threshold=0.999) as stream:
        stream.feed("first part")

        def broken(*_args, **_kwargs):
            raise RuntimeError("device lost")

        monkeypatch.setattr(backbone, "run_hooked", broken)
        failed = stream.feed(" second")
        assert failed.score == 1.0 and failed.is_harmful and "device lost" in failed.errors["m"]
        monkeypatch.setattr(backbone, "run_hooked", original)
        recovered = stream.feed(" third")
    assert recovered.score == pytest.approx(ensemble.score(prompt="Q", response="first part second third").score, abs=1e-5)


def test_score_streaming_still_rescores_the_prefix(tiny_models, write_head, write_config):
    ensemble = ensemble_for(write_head, write_config, tiny_models["llama"], "llama3")
    assert ensemble.score_streaming("Sure, here is").score == ensemble.score("Sure, here is").score


def test_threshold_is_the_streams(tiny_models, write_head, write_config):
    ensemble = ensemble_for(write_head, write_config, tiny_models["llama"], "llama3")
    with ensemble.stream(threshold=0.0) as stream:
        result = stream.feed("hello")
    assert result.threshold == 0.0 and result.is_harmful
