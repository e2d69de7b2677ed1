"""Config validation: every error names the field path; relative paths resolve against the file."""

import re

import pytest

from siren_ensemble import ArtifactError, ConfigError, Ensemble
from siren_ensemble.config import load_config
from siren_ensemble.members import validate_plan


def member(head="head", **extra):
    return {"name": "m", "backbone": "llama3", "head": head, **extra}


@pytest.mark.parametrize("config,message", [
    ({"members": []}, "members: List should have at least 1 item"),
    ({"members": [member(dtype="float64")]}, "members[0].dtype: Input should be 'auto', 'float32', 'bfloat16', 'float16' or 'int8'"),
    ({"members": [member(), member(name="n", treshold=0.3)]}, "members[1].treshold: unknown field; did you mean 'threshold'?"),
    ({"members": [member(), member()]}, "members[1].name: duplicate name 'm' (also members[0])"),
    ({"members": [member(backbone="lama3")]}, "members[0].backbone: Unknown backbone 'lama3'. Did you mean: llama3?"),
    ({"members": [member(device="gpu")]}, "members[0].device: String should match pattern"),
    ({"members": [member(weight=-1)]}, "members[0].weight: Input should be greater than or equal to 0"),
    ({"members": [member(threshold=2)]}, "members[0].threshold: Input should be less than or equal to 1"),
    ({"members": [member(max_memory={"cpu": "1GB"})]}, "members[0].device: device_map and max_memory need device 'auto'"),
    ({"members": [member()], "combiner": {"type": "avg"}}, "combiner.type: Unknown combiner 'avg'."),
    ({"members": [member()], "combiner": {"type": "vote", "rul": "any"}}, "combiner.rul: unknown field; did you mean 'rule'?"),
    ({"members": [member()], "combiner": {"type": "vote", "rule": "all"}}, "combiner.rule: Input should be 'any', 'majority' or 'k'"),
    ({"members": [member()], "combiner": {"type": "vote"}, "threshold": 0.4}, "threshold: the vote combiner decides by its rule"),
    ({"members": [member()], "on_member_error": "ignore"}, "on_member_error: Input should be 'fail_closed', 'fail_open' or 'raise'"),
    ({"members": [member(gguf_file="missing.gguf")]}, "members[0].gguf_file:"),
    ({"member": []}, "members: Field required"),
    ({"members": [member(backbone_options={"trust_remote_code": True})]}, "members[0].backbone_options.trust_remote_code: set by the member's own fields"),
    ({"members": [member(backbone_options={"nested": {"a": 1}})]}, "members[0].backbone_options.nested"),
])
def test_errors_name_the_field(write_config, config, message):
    path = write_config(config)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value).startswith(str(path))
    assert message in str(raised.value)


def test_unknown_combiner_suggests_close_names(write_config):
    path = write_config({"members": [member()], "combiner": {"type": "weighted-mean"}})
    with pytest.raises(ConfigError, match="Did you mean: weighted_mean?.*Available: cascade, logit_mean, max, mean, stacking, vote, weighted_mean"):
        load_config(path)


@pytest.mark.parametrize("text,message", [
    ("members:\n  - name: a\n    head: [unclosed\n", "invalid YAML: line 4, column 1"),
    ("", "empty config"),
    ("- just\n- a list\n", "expected a mapping"),
    # A key written twice is an error naming it and both its lines, at any depth.
    ("threshold: 0.9\nmembers: []\nthreshold: 0.1\n", "line 3, column 1: duplicate key 'threshold' (first on line 1)"),
    ("members:\n  - name: a\n    head: h\n    head: other\n", "line 4, column 5: duplicate key 'head' (first on line 3)"),
    ("members: [{name: a, name: b}]\n", "line 1, column 21: duplicate key 'name' (first on line 1)"),
])
def test_malformed_yaml(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &base {name: a, backbone: llama3, head: h, weight: 2}\n"
                    "members:\n  - <<: *base\n    weight: 3\n")
    with pytest.raises(ConfigError, match="base: unknown field"):  # parsed fine; only the extra top-level key is wrong
        load_config(path)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "latin1.yaml").write_bytes("members: [caf\xe9]".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin1.yaml")


def test_relative_paths_resolve_against_the_config_file(tiny_models, write_head, tmp_path, monkeypatch):
    write_head(tiny_models["llama"], name="heads/a")
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "e.yaml").write_text("members:\n  - name: a\n    backbone: llama3\n    head: ../heads/a\n")
    monkeypatch.chdir("/")
    plans, _ = validate_plan(load_config(config_dir / "e.yaml"))
    assert plans[0].head.source == str(config_dir / "../heads/a")
    assert plans[0].spec.model == str(tiny_models["llama"])


def test_missing_head_directory_names_the_member(write_config):
    path = write_config({"members": [member(head="./no/such/head")]})
    with pytest.raises(ArtifactError, match=r"members\[0\].head: .*no/such/head: no such directory"):
        validate_plan(load_config(path))


def test_member_model_defaults_to_the_heads_base_model_and_can_be_overridden(tiny_models, write_head, write_config):
    head = write_head(tiny_models["llama"])
    plans, _ = validate_plan(load_config(write_config({"members": [member(head=str(head))]})))
    assert plans[0].spec.model == str(tiny_models["llama"])
    assert plans[0].threshold == 0.5
    plans, _ = validate_plan(load_config(write_config({"members": [
        member(head=str(head), model=str(tiny_models["qwen3"]), backbone="qwen3", threshold=0.3, revision="abc123")
    ]})))
    assert (plans[0].spec.model, plans[0].spec.revision, plans[0].threshold) == (str(tiny_models["qwen3"]), "abc123", 0.3)


def test_head_that_reads_beyond_the_model_fails_before_weights_load(tiny_models, write_head, write_config):
    head = write_head(tiny_models["llama"], layers=[0, 7])
    path = write_config({"members": [member(head=str(head))]})
    with pytest.raises(ArtifactError, match=r"members\[0\]: .*siren_config.json: siren_module.selected_layers: layer 7 is beyond"):
        Ensemble.from_config(path)


def test_wrong_backbone_for_the_model(tiny_models, write_head, write_config):
    head = write_head(tiny_models["qwen3"])
    path = write_config({"members": [member(head=str(head))]})
    with pytest.raises(ConfigError, match=r"members\[0\]: backbone 'llama3' reads model_type llama, but .* is 'qwen3'"):
        validate_plan(load_config(path))


def test_hub_ids_are_not_mistaken_for_paths(tmp_path):
    from siren_ensemble.weights import is_local

    assert not is_local("UofTCSSLab/SIREN-Qwen3-4B", tmp_path)
    assert not is_local("gpt2", tmp_path)
    assert is_local("./UofTCSSLab/SIREN-Qwen3-4B", tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").mkdir()
    assert is_local("org/model", tmp_path)


def test_trust_remote_code_is_off_unless_asked(tiny_models, write_head, write_config):
    head = write_head(tiny_models["llama"])
    plans, _ = validate_plan(load_config(write_config({"members": [member(head=str(head))]})))
    assert plans[0].adapter.model_load_kwargs(plans[0].backbone_weights)["trust_remote_code"] is False
    plans, _ = validate_plan(load_config(write_config({"members": [member(head=str(head), trust_remote_code=True, revision="v1")]})))
    kwargs = plans[0].adapter.model_load_kwargs(plans[0].backbone_weights)
    assert kwargs["trust_remote_code"] is True and kwargs["revision"] == "v1"


@pytest.mark.parametrize("combiner,message", [
    ({"type": "vote", "rule": "k", "k": 5}, "combiner.k: must be between 1 and the number of members (1), got 5"),
    ({"type": "stacking", "params": "missing.json"}, "stacking parameters file is missing"),
    ({"type": "stacking"}, "combiner.params: Field required"),
])
def test_combiner_problems_are_found_before_loading_weights(tiny_models, write_head, write_config, combiner, message):
    head = write_head(tiny_models["llama"])
    path = write_config({"members": [member(head=str(head))], "combiner": combiner})
    with pytest.raises(ConfigError if "missing" not in message else ArtifactError) as raised:
        validate_plan(load_config(path))
    assert str(raised.value).startswith(str(path)) and message in str(raised.value)


def test_mlp_mean_head_on_a_model_without_mlp_modules_fails_at_load(tiny_models, write_head, write_config):
    head = write_head(tiny_models["bert"], pooling="mlp_mean")
    path = write_config({"members": [member(head=str(head), backbone="hf")]})
    with pytest.raises(ArtifactError, match=r"members\[0\]: backbone 'hf': mlp_mean pooling needs the MLP of each block"):
        Ensemble.from_config(path)


def test_unavailable_cuda_device_names_the_member(tiny_models, write_head, write_config):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    path = write_config({"members": [member(head=str(write_head(tiny_models["llama"])), device="cuda:0")]})
    with pytest.raises(ConfigError, match=r"members\[0\]: device 'cuda:0' requested but this machine has 0 CUDA device"):
        Ensemble.from_config(path)


def test_a_missing_relative_head_is_not_silently_taken_for_a_hub_id(write_config, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_config({"members": [member(head="heads/typo")]})
    with pytest.raises(ArtifactError, match=r"members\[0\].head: 'heads/typo' is not a local directory .* and could not be fetched"):
        validate_plan(load_config(path))


def test_backbone_options_keys_must_be_argument_names(tmp_path):
    from siren_ensemble.config import EnsembleConfig

    raw = {"members": [{"name": "a", "backbone": "llama3", "head": str(tmp_path), "backbone_options": {"": 0}}]}
    with pytest.raises(ConfigError, match=r"members\[0\]\.backbone_options: '' is not a from_pretrained argument name"):
        EnsembleConfig.from_dict(raw, base_dir=tmp_path)
