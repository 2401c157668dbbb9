"""Infinity's T5 text path on a tiny offline T5 folder: loading, the official tokenizer settings,
packed features."""

from __future__ import annotations

import pytest
import torch
from tinyinfinity_vae import TINY_T5_WIDTH, write_tiny_t5

from varrl.checkpoint import CheckpointError
from varrl.models.infinity.text import encode_prompts, load_text_encoder, pack_features

PROMPTS = ["the text \"OPEN\" on a red sign", "a"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return write_tiny_t5(tmp_path_factory.mktemp("t5") / "flan-t5-tiny")


@pytest.fixture(scope="module")
def t5(t5_dir):
    return load_text_encoder(t5_dir, "cpu", torch.float32)


def test_load(t5):
    tokenizer, encoder = t5
    assert type(tokenizer).__name__ == "T5Tokenizer" and type(encoder).__name__ == "T5EncoderModel"
    assert tokenizer.model_max_length == 512
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert encoder.config.d_model == TINY_T5_WIDTH


def test_pack_features_by_hand():
    feats = torch.arange(6.0).reshape(2, 3, 1)
    packed, lens, cu = pack_features(feats, torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert packed.flatten().tolist() == [0.0, 1.0, 3.0]
    assert lens.tolist() == [2, 1] and cu.tolist() == [0, 2, 3] and cu.dtype == torch.int32


def test_encode_prompts_matches_the_padded_encoder_rows(t5):
    tokenizer, encoder = t5
    feats, lens, cu = encode_prompts(tokenizer, encoder, PROMPTS)
    ids = [tokenizer(p).input_ids for p in PROMPTS]
    assert all(i[-1] == tokenizer.eos_token_id for i in ids)  # T5 ends every prompt with </s>
    assert lens.tolist() == [len(i) for i in ids] and cu.tolist() == [0, len(ids[0]), len(ids[0]) + len(ids[1])]
    assert feats.shape == (sum(map(len, ids)), TINY_T5_WIDTH) and feats.dtype == torch.float32
    # the official way: padded to 512 with the mask, last hidden state, not normalised
    tok = tokenizer(text=PROMPTS, max_length=512, padding="max_length", truncation=True, return_tensors="pt")
    assert tok.input_ids.shape == (2, 512)
    with torch.no_grad():
        ref = encoder(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
    torch.testing.assert_close(feats[: lens[0]], ref[0, : lens[0]], rtol=0, atol=0)
    torch.testing.assert_close(feats[lens[0]:], ref[1, : lens[1]], rtol=0, atol=0)
    assert not torch.allclose(feats.norm(dim=-1), torch.ones(len(feats)))
    # one prompt alone gives the same rows (up to the matmul's blocking)
    alone, n, _ = encode_prompts(tokenizer, encoder, PROMPTS[1:])
    torch.testing.assert_close(alone, feats[lens[0]:], rtol=1e-5, atol=1e-6)


def test_truncation_and_max_len(t5):
    tokenizer, encoder = t5
    feats, lens, _ = encode_prompts(tokenizer, encoder, ["x" * 600, "the text"], max_len=512)
    assert lens.tolist()[0] == 512 and feats.shape[0] == 512 + lens[1]
    _, lens16, _ = encode_prompts(tokenizer, encoder, ["y" * 40], max_len=16)
    assert lens16.tolist() == [16]


def test_dtype_and_errors(t5_dir, tmp_path):
    tokenizer, encoder = load_text_encoder(t5_dir, "cpu", torch.bfloat16)
    assert next(encoder.parameters()).dtype == torch.bfloat16
    feats, _, _ = encode_prompts(tokenizer, encoder, ["a"])
    assert feats.dtype == torch.float32
    with pytest.raises(CheckpointError, match="not found"):
        load_text_encoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_text_encoder(tmp_path / "empty")
    with pytest.raises(ValueError, match="list of strings"):
        encode_prompts(tokenizer, encoder, "a prompt")
