"""The nano text-to-image next-scale transformer.

A VAR-style decoder over the flattened token grids of all scales, conditioned on a prompt in two
ways: AdaLN (shift, scale, gate per block) from the pooled text vector, and cross-attention to
the per-character features (so that it can spell several words in different places).
Teacher forcing runs all scales in one pass under a block-causal mask; sampling runs scale by
scale with a KV cache. Both go through `_blocks`, so they compute the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from varrl.models.text import TextEncoder
from varrl.schedule import ScaleSchedule


@dataclass
class NanoConfig:
    """Shape of the nano transformer."""

    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    text_depth: int = 2
    max_text_len: int = 128
    """longest prompt in characters, BOS included"""


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLD: torch.Tensor, offsets: tuple[int, ...] | None, cache: dict | None) -> torch.Tensor:
        B, L, D = x_BLD.shape
        q, k, v = self.qkv(x_BLD).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:  # sampling: attend to every earlier scale plus this one
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            # Teacher forcing: block-causal attention computed scale by scale, each block with
            # exactly the shapes (and so the kernel and summation order) of the cached step that
            # sampled it; a single masked call differs from sampling by ~1e-4 in log-prob.
            out = torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, :b], v[:, :, :b])
                             for a, b in zip(offsets, offsets[1:])], dim=2)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def context(self, text_BSD: torch.Tensor):
        B, S, D = text_BSD.shape
        k, v = self.kv(text_BSD).view(B, S, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x_BLD, kv, text_mask_BS) -> torch.Tensor:
        B, L, D = x_BLD.shape
        q = self.q(x_BLD).view(B, L, self.heads, D // self.heads).transpose(1, 2)
        k, v = kv
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=text_mask_BS[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ada = nn.Linear(dim, 6 * dim)  # shift/scale/gate for attention and MLP
        self.ln1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.ln_x = nn.LayerNorm(dim, eps=1e-6)
        self.xattn = CrossAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, cond_BD, text_kv, text_mask, offsets, cache):
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(cond_BD)).unsqueeze(1).chunk(6, dim=-1)
        x = x + (1 + g1) * self.attn(self.ln1(x) * (1 + sc1) + sh1, offsets, cache)
        x = x + self.xattn(self.ln_x(x), text_kv, text_mask)
        return x + (1 + g2) * self.mlp(self.ln2(x) * (1 + sc2) + sh2)


class NanoVAR(nn.Module):
    def __init__(self, cfg: NanoConfig, schedule: ScaleSchedule, vocab_size: int, code_dim: int):
        super().__init__()
        self.cfg, self.schedule, self.vocab_size = cfg, schedule, vocab_size
        D = cfg.dim
        self.text = TextEncoder(D, cfg.text_depth, cfg.heads, cfg.max_text_len)
        self.cond = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.start = nn.Linear(D, D)
        self.word_embed = nn.Linear(code_dim, D)
        self.pos = nn.Parameter(torch.randn(1, schedule.total_tokens, D) * 0.02)
        self.lvl = nn.Embedding(schedule.num_steps, D)
        self.blocks = nn.ModuleList([Block(D, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.head_ada = nn.Linear(D, 2 * D)
        self.head_ln = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.head = nn.Linear(D, vocab_size)
        nn.init.zeros_(self.head_ada.weight)
        nn.init.zeros_(self.head_ada.bias)
        lvl_idx = torch.tensor(schedule.step_of_token())
        self.register_buffer("lvl_idx", lvl_idx, persistent=False)

    def encode_text(self, ids_BS: torch.Tensor, mask_BS: torch.Tensor) -> dict:
        """Everything about the prompt that every scale reuses: the context of each block."""
        feats_BSD, pooled_BD = self.text(ids_BS, mask_BS)
        return {"cond": self.cond(pooled_BD), "pooled": pooled_BD, "mask": mask_BS,
                "kv": [blk.xattn.context(feats_BSD) for blk in self.blocks]}

    def _embed(self, ctx: dict, start: int, end: int, x_BlC: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings for flat positions start..end; position 0 is the text-derived start token."""
        parts = []
        if start == 0:
            parts.append(self.start(ctx["pooled"]).unsqueeze(1))
        if x_BlC is not None:
            parts.append(self.word_embed(x_BlC))
        h = torch.cat(parts, dim=1)
        return h + self.pos[:, start:end] + self.lvl(self.lvl_idx[start:end])

    def _blocks(self, h, ctx, offsets, caches) -> torch.Tensor:
        for i, blk in enumerate(self.blocks):
            h = blk(h, ctx["cond"], ctx["kv"][i], ctx["mask"], offsets, None if caches is None else caches[i])
        sh, sc = self.head_ada(F.silu(ctx["cond"])).unsqueeze(1).chunk(2, dim=-1)
        return self.head(self.head_ln(h) * (1 + sc) + sh)

    def forward(self, ctx: dict, inputs_BlC: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: inputs for scales 2..m (from the tokenizer; [B, 0, C] for m = 1) ->
        logits [B, L, V] for scales 1..m, L = offsets[m]."""
        L = 1 + inputs_BlC.shape[1]
        offsets = tuple(o for o in self.schedule.offsets if o <= L)
        if offsets[-1] != L:
            raise ValueError(f"{L} tokens do not end at a scale boundary ({self.schedule.offsets})")
        h = self._embed(ctx, 0, L, inputs_BlC if L > 1 else None)
        return self._blocks(h, ctx, offsets, None)

    def new_cache(self) -> list[dict]:
        return [{} for _ in self.blocks]

    def step(self, ctx: dict, k: int, x_BlC: torch.Tensor | None, caches: list[dict]) -> torch.Tensor:
        """Sampling: logits [B, h_k*w_k, V] for step k (0-based); appends this scale to the caches."""
        off = self.schedule.offsets
        h = self._embed(ctx, off[k], off[k + 1], x_BlC)
        return self._blocks(h, ctx, None, caches)


def fork_context(ctx: dict, repeats: int) -> dict:
    """Repeat a prompt context for `repeats` continuations per row (row-major: i*repeats + j)."""
    rep = lambda t: t.repeat_interleave(repeats, dim=0)  # noqa: E731
    return {"cond": rep(ctx["cond"]), "pooled": rep(ctx["pooled"]), "mask": rep(ctx["mask"]),
            "kv": [(rep(k), rep(v)) for k, v in ctx["kv"]]}


def fork_caches(caches: list[dict], repeats: int) -> list[dict]:
    return [{k: v.repeat_interleave(repeats, dim=0) for k, v in c.items()} for c in caches]
