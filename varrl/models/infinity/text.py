"""The T5 text path of Infinity (Flan-T5-XL for the released models).

What the official code does (`tools/run_infinity.py: load_tokenizer, encode_prompt`, and the same
in `train.py`), and so what we do:
- the tokenizer is `AutoTokenizer.from_pretrained(folder, legacy=True)` with model_max_length 512;
  the encoder is `T5EncoderModel.from_pretrained(folder)` (fp16 on GPU there; the dtype is the
  caller's choice here), in eval mode, frozen;
- prompts are tokenized with `max_length=512, padding='max_length', truncation=True` (so T5's
  `</s>` ends every prompt and a prompt longer than 511 tokens is cut), run through the encoder
  with the attention mask, and the last hidden state is cast to float32. Padding to the full
  length is kept on purpose: the valid rows then match the official features to the last bit;
- the features are not normalised here (the transformer's `text_norm` does that);
- they are packed: the valid rows of every prompt concatenated, `[sum(lens), C]`, with `lens`
  (tokens per prompt) and `cu_seqlens` = [0, cumsum(lens)] (int32), the flash-attn varlen layout
  the official `kv_compact, lens, cu_seqlens_k, max_seqlen_k` tuple carries.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from varrl.checkpoint import CheckpointError

T5_MAX_LEN = 512
"""the official tokenizer's model_max_length and padding length"""


def load_text_encoder(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(tokenizer, encoder) from a folder `transformers` loads (tokenizer files + a T5 checkpoint,
    e.g. the downloaded flan-t5-xl; a full T5ForConditionalGeneration checkpoint works, its decoder
    is ignored). The encoder is in eval mode with gradients off."""
    from transformers import AutoTokenizer, T5EncoderModel

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"T5 text encoder folder not found: {folder} (download google/flan-t5-xl there)")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json: it must hold a T5 checkpoint saved by transformers "
                              "(e.g. the google/flan-t5-xl folder)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), legacy=True)
        encoder = T5EncoderModel.from_pretrained(str(folder), dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{folder} could not be loaded as a T5 tokenizer + encoder: {first[:300]}") from None
    tokenizer.model_max_length = T5_MAX_LEN
    encoder = encoder.to(device).eval().requires_grad_(False)
    return tokenizer, encoder


def pack_features(feats_BLC: torch.Tensor, mask_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed [sum(lens), C], lens [B] long, cu_seqlens [B+1] int32) of padded features: the
    first lens[b] rows of row b, concatenated. The mask must be a prefix of ones per row."""
    lens = mask_BL.sum(dim=-1)
    cu_seqlens = F.pad(lens.to(torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    packed = torch.cat([f[: int(n)] for f, n in zip(feats_BLC.unbind(0), lens.tolist())], dim=0)
    return packed, lens.long(), cu_seqlens


@torch.no_grad()
def encode_prompts(tokenizer, encoder, prompts: list[str], max_len: int = T5_MAX_LEN
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """T5 features of `prompts`, packed: (feats [sum(lens), C] float32, lens [B] long, cu_seqlens
    [B+1] int32), on the encoder's device. `max_len` is the padding / truncation length (512 as
    released; Infinity's `cfg_uncond` has as many rows)."""
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    device = next(encoder.parameters()).device
    tokens = tokenizer(text=list(prompts), max_length=max_len, padding="max_length", truncation=True,
                       return_tensors="pt")
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    feats = encoder(input_ids=ids, attention_mask=mask)["last_hidden_state"].float()
    return pack_features(feats, mask)
