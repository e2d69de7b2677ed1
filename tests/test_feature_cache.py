"""The feature cache: chunks written as extraction goes, a stopped run resumes where it stopped."""

import numpy as np
import pytest

from siren_ensemble.members import adapter_for
from siren_ensemble.training.feature_cache import FeatureExtractor

TEXTS = [f"text number {i} " + "word " * (i % 4) for i in range(7)]


class Stopped(Exception):
    pass


def test_a_stopped_extraction_resumes_at_the_first_missing_chunk(tiny_models, tmp_path, monkeypatch):
    def extractor(chunk_size):
        return FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=32,
                                cache_dir=tmp_path / "cache", chunk_size=chunk_size)

    first = extractor(chunk_size=2)
    real_extract = FeatureExtractor._extract
    calls = []

    def stop_at_third_chunk(self, texts):
        calls.append(list(texts))
        if len(calls) == 3:
            raise Stopped
        return real_extract(self, texts)

    monkeypatch.setattr(FeatureExtractor, "_extract", stop_at_third_chunk)
    with pytest.raises(Stopped):
        first.features(TEXTS)
    chunks = tmp_path / "cache" / f"{first.cache_key(TEXTS)}.chunks-2"
    assert sorted(path.name for path in chunks.iterdir()) == ["00000.safetensors", "00001.safetensors"]

    calls.clear()
    resumed = extractor(chunk_size=2).features(TEXTS)
    assert calls == [TEXTS[4:6], TEXTS[6:]]  # only the chunks the stopped run had not written
    assert not chunks.exists() and (tmp_path / "cache" / f"{first.cache_key(TEXTS)}.safetensors").is_file()

    monkeypatch.setattr(FeatureExtractor, "_extract", real_extract)
    whole = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=32,
                             cache_dir=tmp_path / "other", chunk_size=100).features(TEXTS)
    assert sorted(resumed) == sorted(whole)
    for layer in whole:
        np.testing.assert_allclose(resumed[layer], whole[layer], rtol=1e-5, atol=1e-5)


def test_a_finished_extraction_is_read_back_without_the_backbone(tiny_models, tmp_path, monkeypatch):
    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=32, cache_dir=tmp_path, chunk_size=3)
    stored = extractor.features(TEXTS)
    monkeypatch.setattr(FeatureExtractor, "_extract", lambda *_: pytest.fail("the cache must answer"))
    again = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=32, cache_dir=tmp_path, chunk_size=3)
    for layer, array in again.features(TEXTS).items():
        np.testing.assert_array_equal(array, stored[layer])


def test_tests_never_write_features_into_the_user_cache(tiny_models):
    from siren_ensemble.cache import cache_root, feature_cache_root

    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])))  # no cache_dir: the default
    assert extractor.cache_dir == feature_cache_root() != cache_root() / "features"


def test_a_chunk_of_the_wrong_size_is_refused_not_read_into_the_wrong_rows(tiny_models, tmp_path):
    from siren_ensemble.errors import ArtifactError
    from siren_ensemble.training.feature_cache import _chunk_path, _write_atomically

    extractor = FeatureExtractor(adapter_for("llama3", str(tiny_models["llama"])), max_length=32, cache_dir=tmp_path, chunk_size=4)
    chunks_dir = tmp_path / f"{extractor.cache_key(TEXTS)}.chunks-4"
    _write_atomically({0: np.zeros((2, 64), dtype=np.float32)}, _chunk_path(chunks_dir, 0, 4))  # 2 rows, 4 expected
    with pytest.raises(ArtifactError, match=r"\[2\] rows where 4 were expected; delete .*chunks-4 to extract again"):
        extractor.features(TEXTS)
