"""Text cleaning and the prompt/response join are the reference runtime's, character for character."""

import pytest

from siren_ensemble.text import clean_text, join_prompt_response

siren_guard_module = pytest.importorskip("siren_guard.siren_guard", reason="llm-siren is a test dependency")

SAMPLES = [
    "",
    "   ",
    "plain text",
    "<|im_start|>user\nHello<|im_end|>",
    "[INST] <<SYS>>be nice<</SYS>> hi [/INST]",
    "a\t\t b     c\n\n\n\n\nd",
    "<s>x</s><|eot_id|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>",
    "unicode ünïcödé 漢字 \u00a0 nbsp",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_clean_text_matches_reference(text):
    reference = siren_guard_module._to_raw_text(text) if text else ""
    assert clean_text(text) == (reference or " ")


@pytest.mark.parametrize("prompt,response", [("p", "r"), ("p", None), (None, "r"), ("", "r"), ("p", ""), (None, None)])
def test_join_matches_reference(prompt, response):
    assert join_prompt_response(prompt, response) == siren_guard_module._join_prompt_response(prompt, response)
