"""docs/categories.md cannot drift from the code: its taxonomy table and its mapping tables are checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from siren_ensemble.data.category_labels import ADVBENCH_HCT, GARAK_TYPOLOGY, PYRIT_HARM_CATEGORIES
from siren_ensemble.taxonomy import CATEGORIES, JUDGED_OPENAI_KEYS, OPENAI_KEYS

DOC = (Path(__file__).parents[1] / "docs" / "categories.md").read_text()


@pytest.mark.parametrize("category", CATEGORIES, ids=lambda category: category.key)
def test_each_category_has_its_row_with_its_openai_keys(category):
    row = next((line for line in DOC.splitlines() if line.startswith(f"| `{category.key}` |")), None)
    assert row is not None, f"docs/categories.md has no row for {category.key}"
    assert set(re.findall(r"`([a-z/-]+)`", row.split("|")[3])) == set(category.openai)


def test_the_unclassified_openai_keys_are_named():
    for key in set(OPENAI_KEYS) - set(JUDGED_OPENAI_KEYS):
        assert f"`{key}`" in DOC


@pytest.mark.parametrize("table", [GARAK_TYPOLOGY, PYRIT_HARM_CATEGORIES, ADVBENCH_HCT], ids=["garak", "pyrit", "advbench"])
def test_every_mapped_source_label_is_documented(table):
    missing = [label for label in table if f"`{label}`" not in DOC]
    assert not missing, f"docs/categories.md does not list: {missing}"
