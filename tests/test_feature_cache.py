"""The feature cache: rows stored per text as extraction goes, so a grown list or a stopped run extracts only the
texts no shard holds, and entries of the earlier format (whole lists, chunks of a stopped run) stay valid."""

import numpy as np
import pytest

from siren_ensemble.errors import ArtifactError
from siren_ensemble.members import adapter_for
from siren_ensemble.training.feature_cache import (DIGESTS_KEY, FeatureExtractor, TextStore, _write_atomically,
                                                   text_digest)

TEXTS = [f"text number {i} " + "word " * (i % 4) for i in range(7)]
NEW = [f"a new record {i} " + "more " * i for i in range(3)]


class Stopped(Exception):
    pass


@pytest.fixture
def extractor(tiny_models, tmp_path):
    """Extractors of the tiny Llama; those given the same ``cache`` share one cache directory."""
    def make(cache: str = "cache", chunk_size: int = 512, max_length: int = 32, dtype: str = "float32",
             pooling: str = "residual_mean", max_layer: int | None = None) -> FeatureExtractor:
        return FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"]), dtype=dtype), max_length=max_length,
                                pooling=pooling, cache_dir=tmp_path / cache, chunk_size=chunk_size, max_layer=max_layer)

    return make


@pytest.fixture
def extracted(monkeypatch) -> list[list[str]]:
    """The texts of every ``_extract`` call (every time the backbone runs)."""
    calls = []
    real_extract = FeatureExtractor._extract

    def counting(self, texts):
        calls.append(list(texts))
        return real_extract(self, texts)

    monkeypatch.setattr(FeatureExtractor, "_extract", counting)
    return calls


def assert_same_features(actual, expected, atol=1e-6):
    assert sorted(actual) == sorted(expected)
    for layer in expected:
        np.testing.assert_allclose(actual[layer], expected[layer], rtol=0, atol=atol)


def test_a_grown_list_extracts_only_its_new_texts(extractor, extracted):
    extractor().features(TEXTS)
    grown = TEXTS[:3] + NEW[:2] + TEXTS[3:] + NEW[2:]
    assert not extractor().is_cached(grown)
    extracted.clear()
    features = extractor().features(grown)
    assert extracted == [NEW]
    assert extractor().is_cached(grown[::-1])  # any list of stored texts, without a list entry of its own

    cold = extractor(cache="cold").features(grown)
    assert_same_features(features, cold)


def test_rows_come_back_in_the_order_given_with_duplicates(extractor, extracted):
    whole = extractor().features(TEXTS)
    texts = [TEXTS[5], TEXTS[1], TEXTS[5], NEW[0], NEW[0], TEXTS[0]]
    extracted.clear()
    features = extractor().features(texts)
    assert extracted == [[NEW[0]]]  # a text given twice is extracted once

    new = extractor(cache="cold").features([NEW[0]])
    for layer in whole:
        np.testing.assert_array_equal(features[layer][[0, 1, 2, 5]], whole[layer][[5, 1, 5, 0]])
        np.testing.assert_allclose(features[layer][[3, 4]], new[layer][[0, 0]], rtol=0, atol=1e-6)


def test_a_stopped_extraction_resumes_without_extracting_the_stored_shard(extractor, monkeypatch):
    real_extract = FeatureExtractor._extract
    calls, stopping = [], [True]

    def stop_after_the_first_shard(self, texts):
        calls.append(list(texts))
        if len(calls) == 2 and stopping:
            stopping.clear()
            raise Stopped
        return real_extract(self, texts)

    monkeypatch.setattr(FeatureExtractor, "_extract", stop_after_the_first_shard)
    first = extractor(chunk_size=2)
    with pytest.raises(Stopped):
        first.features(TEXTS)
    assert len(list(first.store.directory.glob("*.safetensors"))) == 1
    assert not (first.cache_dir / f"{first.cache_key(TEXTS)}.safetensors").exists()

    calls.clear()
    resumed = extractor(chunk_size=3).features(TEXTS)  # another chunk size reads the same rows
    assert calls == [TEXTS[2:5], TEXTS[5:]]
    assert (first.cache_dir / f"{first.cache_key(TEXTS)}.safetensors").is_file()

    monkeypatch.setattr(FeatureExtractor, "_extract", real_extract)
    assert_same_features(resumed, extractor(cache="cold").features(TEXTS))


@pytest.mark.parametrize("change", [{"max_length": 8}, {"pooling": "mlp_mean"}, {"dtype": "bfloat16"}])
def test_rows_of_another_dtype_max_length_or_pooling_are_not_reused(extractor, extracted, change):
    extractor().features(TEXTS)
    other = extractor(**change)
    assert other.store.directory != extractor().store.directory
    assert not other.is_cached(TEXTS)
    extracted.clear()
    other.features(TEXTS)
    assert extracted == [TEXTS]


def test_a_finished_extraction_is_read_back_without_the_backbone(extractor, monkeypatch):
    stored = extractor(chunk_size=3).features(TEXTS)
    monkeypatch.setattr(FeatureExtractor, "_extract", lambda *_: pytest.fail("the cache must answer"))
    for layer, array in extractor(chunk_size=3).features(TEXTS).items():
        np.testing.assert_array_equal(array, stored[layer])


def test_a_list_entry_of_the_earlier_format_is_read_and_filed_per_text(extractor, extracted):
    rng = np.random.default_rng(0)
    old = {layer: rng.standard_normal((len(TEXTS), 8)).astype(np.float32) for layer in range(3)}
    first = extractor()
    _write_atomically(old, first.cache_dir / f"{first.cache_key(TEXTS)}.safetensors")  # no per-text rows
    assert first.is_cached(TEXTS) and not first.is_cached(TEXTS[2:5])

    for layer, array in first.features(TEXTS).items():
        np.testing.assert_array_equal(array, old[layer])
    assert extractor().is_cached(TEXTS[2:5])
    for layer, array in extractor().features(TEXTS[2:5]).items():
        np.testing.assert_array_equal(array, old[layer][2:5])
    assert extracted == []


def test_the_list_key_is_that_of_the_earlier_format_so_its_entries_stay_valid(tmp_path):
    adapter = adapter_for("llama3", "HuggingFaceTB/SmolLM2-135M-Instruct", revision="main")
    extractor = FeatureExtractor(adapter, max_length=512, cache_dir=tmp_path)
    assert extractor.cache_key(["a", "b"]) == "aa133f83005938392312299499da62ce"  # computed by the earlier format


def test_chunks_of_a_stopped_run_of_the_earlier_format_are_filed_per_text(extractor, extracted):
    chunk = extractor(cache="cold").features(TEXTS[2:4])
    first = extractor()
    chunks_dir = first.cache_dir / f"{first.cache_key(TEXTS)}.chunks-2"
    _write_atomically(chunk, chunks_dir / "00001.safetensors")  # texts 2 and 3, as the earlier format named them
    extracted.clear()
    features = first.features(TEXTS)
    assert extracted == [TEXTS[:2] + TEXTS[4:]]
    assert not chunks_dir.exists()
    for layer, array in chunk.items():
        np.testing.assert_array_equal(features[layer][2:4], array)


def test_a_chunk_of_the_wrong_size_is_refused_not_read_into_the_wrong_rows(extractor):
    first = extractor(chunk_size=2)
    chunks_dir = first.cache_dir / f"{first.cache_key(TEXTS)}.chunks-4"
    _write_atomically({0: np.zeros((2, 64), dtype=np.float32)}, chunks_dir / "00000.safetensors")  # 2 rows, 4 expected
    with pytest.raises(ArtifactError, match=r"\[2\] rows where 4 were expected; delete .*chunks-4 to extract again"):
        first.features(TEXTS)


def test_a_shard_whose_digests_and_rows_disagree_is_refused_by_name(extractor):
    first = extractor()
    shard = first.store.directory / "broken.safetensors"
    digests = "\n".join(text_digest(text) for text in TEXTS[:3])
    _write_atomically({0: np.zeros((2, 64), dtype=np.float32)}, shard, {DIGESTS_KEY: digests})
    message = r"broken\.safetensors: 3 text digests but \[2\] rows; delete it to extract its texts again"
    with pytest.raises(ArtifactError, match=message):
        first.features(TEXTS)
    with pytest.raises(ArtifactError, match=message):
        first.is_cached(TEXTS)

    shard.write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match=r"broken\.safetensors: unreadable .*; delete it to extract its texts"):
        extractor().features(TEXTS)


def test_two_extractions_filling_one_store_side_by_side_do_not_clash(extractor, monkeypatch):
    real_extract = FeatureExtractor._extract
    first, second = extractor(chunk_size=3), extractor(chunk_size=2)
    second_ran = []

    def second_runs_meanwhile(self, texts):
        if self is first and not second_ran:  # first has listed the store and found nothing; second fills it
            second_ran.append(second.features(TEXTS[::-1]))
        return real_extract(self, texts)

    monkeypatch.setattr(FeatureExtractor, "_extract", second_runs_meanwhile)
    features = first.features(TEXTS)
    (first.store.directory / "0123.safetensors.89ab.partial").write_bytes(b"a writer killed mid-write")
    assert len(list(first.store.directory.glob("*.safetensors"))) == 3 + 4  # each run's shards, none overwritten

    monkeypatch.setattr(FeatureExtractor, "_extract", lambda *_: pytest.fail("the store must answer"))
    again = extractor().features(TEXTS[1:])  # a list without an entry of its own: read from the shards
    assert_same_features(again, {layer: array[1:] for layer, array in features.items()})
    assert_same_features(second_ran[0], {layer: array[::-1] for layer, array in features.items()})


def test_tests_never_write_features_into_the_user_cache(tiny_models):
    from siren_ensemble.cache import cache_root, feature_cache_root

    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])))  # no cache_dir: the default
    assert extractor.cache_dir == feature_cache_root() != cache_root() / "features"


def test_a_list_entry_is_still_read_where_its_rows_cannot_be_filed(extractor, monkeypatch, caplog):
    old = {0: np.arange(len(TEXTS) * 4, dtype=np.float32).reshape(len(TEXTS), 4)}
    first = extractor()
    _write_atomically(old, first.cache_dir / f"{first.cache_key(TEXTS)}.safetensors")

    def read_only(*_):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(TextStore, "add", read_only)
    np.testing.assert_array_equal(first.features(TEXTS)[0], old[0])
    assert "not filed per text" in caplog.text


# ---- depth-cut extraction -----------------------------------------------------------------------------------------


def test_a_cut_extractor_runs_and_stores_only_the_layers_it_needs_and_they_equal_a_full_pass(extractor, extracted):
    full = extractor(cache="full").features(TEXTS)
    depth = len(full)
    assert depth >= 3
    cut = extractor(max_layer=1).features(TEXTS)
    assert sorted(cut) == [0, 1]
    for layer in cut:
        np.testing.assert_allclose(cut[layer], full[layer], rtol=0, atol=1e-6)
    shards = list(extractor(max_layer=1).store.directory.glob("*.safetensors"))
    from safetensors import safe_open
    with safe_open(str(shards[0]), framework="np") as shard:
        assert sorted(shard.keys()) == ["layer0", "layer1"] and shard.metadata()["max_layer"] == "1"


def test_a_cut_shard_serves_as_deep_a_cut_but_never_a_deeper_one_or_a_full_request(extractor, extracted):
    extractor(max_layer=1).features(TEXTS)
    extracted.clear()
    extractor(max_layer=0).features(TEXTS)  # shallower: served by the cut shard
    assert extracted == []
    assert not extractor(max_layer=2).is_cached(TEXTS) and not extractor().is_cached(TEXTS)
    full = extractor().features(TEXTS)
    assert extracted == [TEXTS]
    extracted.clear()
    deeper = extractor(max_layer=2).features(TEXTS + NEW[:1])  # the full shard serves the stored texts
    assert extracted == [NEW[:1]] and sorted(deeper) == [0, 1, 2]
    np.testing.assert_array_equal(deeper[2][:len(TEXTS)], full[2])


def test_a_cut_at_the_last_layer_is_stored_as_a_full_shard(extractor, extracted):
    depth = len(extractor(cache="probe").features(TEXTS[:1]))
    extractor(max_layer=depth - 1).features(TEXTS)
    extracted.clear()
    assert extractor().is_cached(TEXTS)


def test_a_cut_list_entry_has_its_own_key(extractor):
    assert extractor(max_layer=1).cache_key(TEXTS) != extractor().cache_key(TEXTS)
    assert extractor(max_layer=1).cache_key(TEXTS) != extractor(max_layer=0).cache_key(TEXTS)
    assert extractor(max_layer=1).store.directory == extractor().store.directory
