"""A tiny random-weight Infinity transformer (depth 4 in 2 chunks, width 64, 6 bits per token, text
width 32), written in the released file layouts (.pth, .safetensors, safetensors shards + index)."""

from __future__ import annotations

import torch

from varrl.models.infinity.files import save_infinity
from varrl.models.infinity.transformer import Infinity, InfinityConfig

TINY_INFINITY = dict(depth=4, width=64, heads=4, mlp_hidden=128, bits=6, text_dim=32, text_maxlen=24, pool_heads=2,
                     block_chunks=2)


def build_tiny_infinity(seed: int = 0, **kw) -> Infinity:
    torch.manual_seed(seed)
    model = Infinity(InfinityConfig(**{**TINY_INFINITY, **kw}))
    with torch.no_grad():  # away from the init's near-uniform bit logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        model.head.weight.mul_(4)
    return model.eval()


def write_tiny_infinity(folder, layout: str = ".pth", seed: int = 0, **kw):
    """layout: '.pth', '.safetensors' or 'shards' (a folder of shards with its index)."""
    model = build_tiny_infinity(seed, **kw)
    if layout == "shards":
        return save_infinity(model, folder / "infinity_tiny_weights", shard_bytes=40_000)
    return save_infinity(model, folder / f"infinity_tiny{layout}")
