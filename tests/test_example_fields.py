"""configs/example.yaml says it shows every field: check it against the config models, so it cannot drift.

The fields are walked from the pydantic models in ``config.py`` (recursively, through lists, unions and
nested models) and from each built-in combiner's ``Options``; each must appear in the example as a key,
set or commented out (``# name: value``).
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from siren_ensemble import plugins
from siren_ensemble.config import EnsembleConfig

EXAMPLE = Path(__file__).parents[1] / "configs" / "example.yaml"
#: A key at the start of a line, possibly commented out and/or a list item: `  # - members: [a]`.
_KEY = re.compile(r"^\s*(?:#\s*)?(?:-\s+)?([A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")


def model_fields(model: type[BaseModel], path: str = "") -> dict[str, str]:
    """Every field of ``model`` and of the models its fields hold: the field's path -> its name."""
    found: dict[str, str] = {}
    for name, info in model.model_fields.items():
        where = f"{path}.{name}" if path else name
        found[where] = name
        for nested in _models_in(info.annotation):
            found |= model_fields(nested, where)
    return found


def _models_in(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, (types.UnionType, typing._GenericAlias, types.GenericAlias)) or typing.get_origin(annotation):
        return [model for argument in typing.get_args(annotation) for model in _models_in(argument)]
    return []


def builtin_combiner_fields() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in plugins.combiners().names():
        entry = plugins.combiners().get(name)
        if entry.plugin != plugins.BUILTIN_PROVIDER:
            continue  # a third-party combiner documents its own options
        found |= model_fields(entry.cls.Options, f"combiner({name})")
    return found


def example_keys() -> set[str]:
    keys = set()
    for line in EXAMPLE.read_text().splitlines():
        if match := _KEY.match(line):
            keys.add(match.group(1))
    active = yaml.safe_load(EXAMPLE.read_text())

    def walk(value) -> None:  # keys in flow mappings too ({attn_implementation: sdpa})
        if isinstance(value, dict):
            keys.update(str(key) for key in value)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(active)
    return keys


def test_the_walk_finds_nested_fields():
    fields = model_fields(EnsembleConfig)
    assert {"members.backbone_options", "batching.max_padding", "sliding_window.stride", "combiner.type"} <= set(fields)
    assert "combiner(cascade).stages.low" in builtin_combiner_fields()


@pytest.mark.parametrize("fields", [model_fields(EnsembleConfig), builtin_combiner_fields()],
                         ids=["config", "builtin combiner options"])
def test_example_yaml_shows_every_config_field(fields):
    keys = example_keys()
    missing = sorted(path for path, name in fields.items() if name not in keys)
    assert not missing, f"configs/example.yaml does not show: {', '.join(missing)}"
