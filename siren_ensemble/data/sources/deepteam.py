"""Harmful example requests from deepteam 1.0.10's red-team templates (``vulnerabilities/*/template.py``).

Each template method writes a prompt for an attack generator, with hand-written few-shot examples:
``Example purpose: <an assistant's purpose>`` and then ``"input": "<request>"`` lines. The files are
read as text and parsed with ``ast`` (nothing is imported); a method's type is its name without
``generate_`` and ``_baseline_attacks``.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Iterator

from ...errors import InputError
from ..category_labels import DEEPTEAM_TYPES, deepteam_categories
from ..packages import data_file
from ..records import SafetyRecord
from .registry import source

PACKAGE = "deepteam"

# The vulnerability types kept (``<vulnerability>/<type>``: the keys of DEEPTEAM_TYPES), all harmful.
# Left out, as not harmful requests or too mixed to label as one: graphic_content/graphic_content (gore
# for fiction, autopsies, surgery), graphic_content/sexual_content (sex education, adult-product copy),
# toxicity/insults, profanity and mockery (roasts, satire, venting), bias (questions about stereotypes),
# child_protection (children asking to sign up), misinformation and hallucination (factual traps),
# ethics, fairness, competition, intellectual_property, robustness, the other pii_leakage types and
# every agent/security type (prompt leakage, injections, access control).
KEPT_TYPES = tuple(DEEPTEAM_TYPES)

# String literals are joined with NUL, which no match may cross: an input interrupted by an f-string
# expression ({purpose}) is not a fixed example and is skipped.
_EXAMPLE = re.compile(r'Example purpose:\s*(?P<purpose>[^\n\x00]*)|"input"\s*:\s*"(?P<input>(?:[^"\\\x00]|\\.)*)"')
_METHOD = re.compile(r"generate_(?P<type>\w+?)(?:_baseline)?_attacks")


@source("deepteam", PACKAGE, "harmful",
        "deepteam red-team template examples, kept types only: illegal activity (weapons, drugs, violent and "
        "non-violent crime, sex crime, cybercrime, child exploitation), personal safety (bullying, self-harm, "
        "unsafe practices, dangerous challenges, stalking), pornographic content, threats, requests for a named "
        "person's private data; one group per example block (purpose); off by default", default=False)
def deepteam() -> Iterator[SafetyRecord]:
    for vulnerability in sorted({kind.partition("/")[0] for kind in KEPT_TYPES}):
        path = data_file(PACKAGE, f"vulnerabilities/{vulnerability}/template.py")
        examples = template_examples(path)
        for kind in KEPT_TYPES:
            name, _, wanted = kind.partition("/")
            if name != vulnerability:
                continue
            if not examples.get(wanted):
                raise InputError(f"{path}: no example inputs for type {wanted!r} "
                                 f"(found: {', '.join(sorted(examples)) or 'none'})")
            for purpose, text in examples[wanted]:
                yield SafetyRecord(label=1, source="deepteam", text=text, group=f"deepteam:{wanted}:{purpose}",
                                   categories=deepteam_categories(kind, text))


def template_examples(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Per type (template method), its (example purpose, example input) pairs in file order."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as error:
        raise InputError(f"{path}: line {error.lineno}: not parseable Python ({error.msg})") from None
    examples: dict[str, list[tuple[str, str]]] = {}
    for node in ast.walk(tree):
        method = _METHOD.fullmatch(node.name) if isinstance(node, ast.FunctionDef) else None
        if method is None:
            continue
        text = "\x00".join(_literals(node))
        purpose = ""
        for match in _EXAMPLE.finditer(text):
            if match["purpose"] is not None:
                purpose = match["purpose"].strip()
            else:
                try:
                    request = json.loads(f'"{match["input"]}"').strip()
                except json.JSONDecodeError as error:
                    raise InputError(f"{path}: {node.name}: malformed example input ({error.msg})") from None
                if request:
                    examples.setdefault(method["type"], []).append((purpose, request))
    return examples


def _literals(node: ast.AST) -> Iterator[str]:
    """The string literals under ``node`` in source order; an f-string's literal parts are Constant nodes
    (``{{`` already read as ``{``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    for child in ast.iter_child_nodes(node):
        yield from _literals(child)
