from __future__ import annotations

import pytest
import torch

from varrl.models.text import BOS, PAD, VOCAB_SIZE, PromptError, batch_prompts, encode_prompt, normalize_prompt


def test_bos_first_and_ascii_mapping():
    assert VOCAB_SIZE == 97
    # id = ord(ch) - 32 + 2: ' ' -> 2, 'a' (97) -> 67, '~' (126) -> 96
    assert encode_prompt("a b~", 10) == [BOS, 67, 2, 68, 96]
    assert encode_prompt('"A"', 10) == [BOS, 4, 35, 4]


def test_curly_quotes_and_accents_map_to_ascii():
    assert normalize_prompt("caf\u00e9 \u201cx\u201d") == 'cafe "x"'
    assert encode_prompt("caf\u00e9 \u201cx\u201d", 20) == encode_prompt('cafe "x"', 20)
    assert normalize_prompt("it\u2019s a\u2014b\u2026") == "it's a-b..."
    assert normalize_prompt("a\tb\nc") == "a b c"


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_prompt_raises(text):
    with pytest.raises(PromptError, match="empty"):
        encode_prompt(text, 10)


def test_empty_allowed_for_uncond():
    assert encode_prompt("", 10, allow_empty=True) == [BOS]


def test_non_ascii_symbol_names_char_and_position():
    with pytest.raises(PromptError) as e:
        encode_prompt("ab\u20acc", 20)
    msg = str(e.value)
    assert "'\u20ac'" in msg and "U+20AC" in msg and "position 2" in msg


def test_too_long_names_limit():
    assert len(encode_prompt("abcd", 5)) == 5  # BOS + 4 fits exactly
    with pytest.raises(PromptError) as e:
        encode_prompt("abcde", 5)
    assert "at most 4" in str(e.value) and "5 characters" in str(e.value)


def test_non_string_prompt():
    with pytest.raises(PromptError, match="string"):
        encode_prompt(None, 5)  # type: ignore[arg-type]


def test_batch_prompts_padding():
    ids, mask = batch_prompts(["ab", "a"], 10)
    assert ids.tolist() == [[BOS, 67, 68], [BOS, 67, PAD]]
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    assert ids.dtype == torch.long
