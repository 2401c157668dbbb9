"""Tiny random Infinity tokenizer and text encoder, written in the released layouts (no downloads).

- a BSQ tokenizer (d = 6 bits per cell, 4 px cells, 32-channel base) saved as the official
  `{"vae": state_dict}` .pth (with the quantizer's mask buffers under both of their names), and an
  f8 one read with the 2x2 spatial patchify;
- a T5 folder as `google/flan-t5-xl` is laid out: a T5ForConditionalGeneration checkpoint (width 32,
  gated-GELU) plus a T5 Unigram tokenizer built offline from a character vocabulary.
"""

from __future__ import annotations

import string

import torch

from varrl.models.infinity.bsq import BSQVAE, BSQVAEConfig, save_bsq_vae

TINY_BSQ = BSQVAEConfig(codebook_dim=6, ch=32, ch_mult=(1, 2, 2), dec_ch_mult=(1, 2, 2), num_res_blocks=1,
                        patch_size=4)
TINY_BSQ_PATCHIFY = BSQVAEConfig(codebook_dim=3, ch=32, ch_mult=(1, 1, 1, 1), dec_ch_mult=(1, 1, 1, 1),
                                 num_res_blocks=1, patch_size=8, patchify=True)
TINY_T5_WIDTH = 32


def build_tiny_bsq(seed: int = 0, cfg: BSQVAEConfig = TINY_BSQ) -> BSQVAE:
    torch.manual_seed(seed)
    vae = BSQVAE(cfg)
    with torch.no_grad():  # away from the init (unit GroupNorm scales, zero biases)
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae.eval()


def write_tiny_bsq(folder, seed: int = 0, cfg: BSQVAEConfig = TINY_BSQ, name: str = "infinity_vae_tiny.pth"):
    return save_bsq_vae(build_tiny_bsq(seed, cfg), folder / name)


def tiny_t5_vocab() -> list[tuple[str, float]]:
    """T5's special pieces (<pad> 0, </s> 1, <unk> 2), the word boundary, printable characters and a
    few whole words (so that tokenization is not one piece per character everywhere)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in string.printable[:94]]
    vocab += [("\u2581" + w, -1.0) for w in ("the", "text", "a", "sign", "on", "with", "red", "of")]
    return vocab


def write_tiny_t5(folder, seed: int = 0, width: int = TINY_T5_WIDTH):
    """A flan-t5-like folder: tokenizer files and a T5ForConditionalGeneration checkpoint."""
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_t5_vocab()
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(folder))
    cfg = T5Config(vocab_size=len(vocab), d_model=width, d_kv=8, d_ff=2 * width, num_layers=2, num_decoder_layers=1,
                   num_heads=4, feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1)
    torch.manual_seed(seed)
    T5ForConditionalGeneration(cfg).save_pretrained(str(folder))
    return folder
