"""Character-level text encoding for the nano model.

Vocabulary: printable ASCII (space .. '~'), plus PAD and a BOS token that every prompt starts with.
Mapping of other characters (documented behaviour): text is NFKD-normalised and accents are
dropped (e -> e), typographic quotes and dashes become their ASCII forms; any character that is
still outside printable ASCII is an error naming it. The unconditional prompt (for CFG) is the
empty string, which encodes to BOS alone; users cannot pass it (an empty prompt is an error).
"""

from __future__ import annotations

import unicodedata

import torch
from torch import nn

PAD, BOS = 0, 1
_FIRST, _LAST = 32, 126  # printable ASCII
VOCAB_SIZE = 2 + (_LAST - _FIRST + 1)
_TRANSLATE = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                            "\u2014": "-", "\u00a0": " ", "\u2026": "..."})


class PromptError(ValueError):
    pass


def normalize_prompt(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.translate(_TRANSLATE))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return text.replace("\n", " ").replace("\t", " ")


def encode_prompt(text: str, max_len: int, allow_empty: bool = False) -> list[int]:
    """Prompt -> token ids starting with BOS; clear errors for empty, too long or unknown characters."""
    if not isinstance(text, str):
        raise PromptError(f"a prompt must be a string, got {type(text).__name__}")
    norm = normalize_prompt(text)
    if not norm.strip() and not allow_empty:
        raise PromptError("empty prompt: give some text, e.g. 'the text \"OPEN\" in red on a white background'")
    for pos, ch in enumerate(norm):
        if not _FIRST <= ord(ch) <= _LAST:
            raise PromptError(f"prompt character {ch!r} (U+{ord(ch):04X}) at position {pos} is outside the "
                              "model's vocabulary (printable ASCII); remove or transliterate it")
    ids = [BOS] + [ord(ch) - _FIRST + 2 for ch in norm]
    if len(ids) > max_len:
        raise PromptError(f"prompt is {len(norm)} characters; this model reads at most {max_len - 1}. "
                          "Shorten it or use a model with a larger max_text_len")
    return ids


def batch_prompts(prompts: list[str], max_len: int, allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (ids [B, L] padded with PAD, key padding mask [B, L] True where there is a real token)."""
    seqs = [encode_prompt(p, max_len, allow_empty) for p in prompts]
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return ids, ids != PAD


class TextEncoder(nn.Module):
    """Character embeddings + a small bidirectional transformer; returns per-character features
    and a pooled vector (mean over real characters) for AdaLN conditioning."""

    def __init__(self, dim: int, depth: int, heads: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.tok = nn.Embedding(VOCAB_SIZE, dim)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids_BL: torch.Tensor, mask_BL: torch.Tensor):
        x = self.tok(ids_BL) + self.pos[:, : ids_BL.shape[1]]
        x = self.norm(self.blocks(x, src_key_padding_mask=~mask_BL))
        m = mask_BL.unsqueeze(-1).to(x.dtype)
        pooled_BD = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return x, pooled_BD
