"""Length bucketing: every text lands in exactly one batch, caps hold, and scores do not depend on it."""

import random

import pytest

from siren_ensemble import Ensemble
from siren_ensemble.encoding import plan_batches

from .conftest import DEPTH, TEXTS

LENGTHS = [random.Random(seed).randint(1, 300) for seed in range(60)]


@pytest.mark.parametrize("max_tokens,max_texts,max_padding", [(100000, 1000, 1.0), (2000, 8, 1.0), (100000, 1000, 0.25), (900, 16, 0.1), (50, 4, 0.0)])
def test_batches_cover_every_text_once_within_their_caps(max_tokens, max_texts, max_padding):
    batches = plan_batches(LENGTHS, max_tokens, max_texts, max_padding)
    assert sorted(position for batch in batches for position in batch) == list(range(len(LENGTHS)))
    for batch in batches:
        if len(batch) == 1:
            continue  # a single text is always allowed, however long
        lengths = [LENGTHS[i] for i in batch]
        padded = len(batch) * max(lengths)
        assert len(batch) <= max_texts and padded <= max_tokens
        assert 1 - sum(lengths) / padded <= max_padding + 1e-12


def test_padding_cap_splits_mixed_lengths_and_no_cap_does_not():
    assert len(plan_batches(LENGTHS, 100000, 1000, 1.0)) == 1
    bucketed = plan_batches(LENGTHS, 100000, 1000, 0.25)
    assert len(bucketed) > 2
    padded = sum(len(batch) * max(LENGTHS[i] for i in batch) for batch in bucketed)
    assert padded < 0.8 * len(LENGTHS) * max(LENGTHS)


def test_scores_do_not_depend_on_bucketing_or_order(tiny_models, write_head, write_config):
    head = write_head(tiny_models["qwen3"], layers=[1, DEPTH - 1], pooling="mlp_mean")
    texts = TEXTS + [f"sample text {i} " * (i % 9 + 1) for i in range(20)]
    scores = {}
    for max_padding in (0.0, 0.25, 1.0):
        ensemble = Ensemble.from_config(write_config({
            "members": [{"name": "m", "backbone": "qwen3", "head": str(head)}],
            "batching": {"max_padding": max_padding, "max_texts": 7},
        }, name=f"{max_padding}.yaml"))
        scores[max_padding] = [result.score for result in ensemble.score_batch(texts)]
        shuffled = list(range(len(texts)))
        random.Random(1).shuffle(shuffled)
        reordered = ensemble.score_batch([texts[i] for i in shuffled])
        assert [reordered[shuffled.index(i)].score for i in range(len(texts))] == pytest.approx(scores[max_padding], abs=1e-6)
    assert scores[0.0] == pytest.approx(scores[1.0], abs=1e-6)
    assert scores[0.25] == pytest.approx(scores[1.0], abs=1e-6)


@pytest.mark.parametrize("batching,field", [({"max_padding": 1.5}, "batching.max_padding"), ({"max_padding": -0.1}, "batching.max_padding")])
def test_bad_batching_values_name_the_field(tiny_models, write_head, write_config, batching, field):
    from siren_ensemble import ConfigError

    head = write_head(tiny_models["llama"])
    with pytest.raises(ConfigError, match=field):
        Ensemble.from_config(write_config({"members": [{"name": "m", "backbone": "llama3", "head": str(head)}], "batching": batching}))
