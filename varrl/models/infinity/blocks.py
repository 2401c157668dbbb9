"""Building blocks of the Infinity transformer, written for varrl from the released architecture.

Module and parameter names follow the released state dicts (`sa.mat_qkv`, `ca.mat_kv`, `ada_gss`,
`zero_k_bias` ..) so that a strict load of `infinity_2b_reg.pth` works. Every projection is an
`nn.Linear` called as a module (biases that the official code fuses into `F.linear` are added
after the call), so adapters that wrap Linear layers (LoRA) see every matmul. Attention is
PyTorch's `scaled_dot_product_attention`; nothing here needs flash-attn.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, MutableMapping

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LOG_SCALE = math.log(100.0)  # cosine attention's learned per-head logit scale is capped at 100
ROPE_BASE = 10000.0


# -- 2-D rotary position embedding -------------------------------------------------------------------
def rope_positions(side: int, template_side: int) -> torch.Tensor:
    """Positions of a grid side's cells on the template's last grid: round(i * template / side),
    computed as the release does (float32 product, round half to even)."""
    return (torch.arange(side) * (template_side / side)).round()


def rope_angles(head_dim: int, grids, template_hw: tuple[int, int]) -> torch.Tensor:
    """Rotation angles [L, head_dim // 2] of every token of `grids` (flattened coarse to fine,
    row-major): the first half of the channel pairs turn with the row position, the second half
    with the column position, pair j of each half at frequency 10000^(-2j / (head_dim/2))."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head width divisible by 4, got {head_dim}")
    half = head_dim // 2
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))
    uph, upw = template_hw
    out = []
    for h, w in grids:
        rows = torch.outer(rope_positions(h, uph), inv_freq)  # [h, half/2]
        cols = torch.outer(rope_positions(w, upw), inv_freq)  # [w, half/2]
        grid = torch.cat((rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)), dim=-1)
        out.append(grid.reshape(h * w, half))
    return torch.cat(out)


def apply_rope(x_BHLc: torch.Tensor, cos_Lh: torch.Tensor, sin_Lh: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (x[2j], x[2j+1]) by the angles whose cos/sin are given."""
    pairs = x_BHLc.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack((cos_Lh * x0 - sin_Lh * x1, sin_Lh * x0 + cos_Lh * x1), dim=-1).flatten(-2)


# -- caches -------------------------------------------------------------------------------------
class KVCache(MutableMapping):
    """One block's cached keys/values of the earlier scales ("k", "v"; "ca_k", "ca_v" for the text),
    which the block extends in place. A mapping but not a dict on purpose: FSDP2 rebuilds the dict,
    list and tuple arguments of a sharded module's forward to hook their tensors, so a block
    appending to a dict argument would append to a copy and later scales would lose their past."""

    def __init__(self, items: dict[str, torch.Tensor] | None = None):
        self._kv: dict[str, torch.Tensor] = dict(items or {})

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._kv[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self._kv[key] = value

    def __delitem__(self, key: str) -> None:
        del self._kv[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kv)

    def __len__(self) -> int:
        return len(self._kv)


# -- norms ----------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return ((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add(self.eps))) * self.weight).to(x.dtype)


def ada_norm(x_BLC: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine-free LayerNorm in fp32, then x * (1 + scale) + shift."""
    return F.layer_norm(x_BLC.float(), x_BLC.shape[-1:], eps=eps).mul(scale.add(1)).add(shift)


# -- attention ------------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    """Cosine attention: q and k l2-normalised per head, q times a learned per-head factor
    exp(min(s_h, log 100)), then 2-D RoPE on both; logits are q.k (no 1/sqrt(c))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))  # part of the released files
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLC: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask_LL: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = (self.mat_qkv(x_BLC) + bias).view(B, L, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, c]
        scale = self.scale_mul_1H11.clamp_max(MAX_LOG_SCALE).exp()
        q = apply_rope(F.normalize(q, dim=-1, eps=1e-12).mul(scale), *rope)
        k = apply_rope(F.normalize(k, dim=-1, eps=1e-12), *rope).to(v.dtype)  # cached as v's dtype
        if cache is not None:  # sampling: this scale attends to every earlier scale and itself
            if "k" in cache:
                k, v = torch.cat((cache["k"], k), dim=2), torch.cat((cache["v"], v), dim=2)
            cache["k"], cache["v"] = k, v
        out = F.scaled_dot_product_attention(q.to(v.dtype), k, v, attn_mask=mask_LL, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class CrossAttention(nn.Module):
    """Attention from the image tokens (or, with `pool`, from one learned query per head) to the
    text tokens of each row; `mask_BT` marks the row's real text tokens. Plain 1/sqrt(c) scaling."""

    def __init__(self, dim: int, kv_dim: int, heads: int, pool: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.pool = heads, dim // heads, pool
        if pool:
            self.mat_q = nn.Parameter(torch.randn(1, heads, self.head_dim) * (1 / dim / 3) ** 0.5)
        else:
            self.mat_q = nn.Linear(dim, dim)
        self.mat_kv = nn.Linear(kv_dim, 2 * dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def text_kv(self, text_BTC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = text_BTC.shape
        kv = (self.mat_kv(text_BTC) + torch.cat((self.zero_k_bias, self.v_bias))).view(B, T, 2, self.heads,
                                                                                       self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, T, c]
        return k, v

    def forward(self, x_BLC: torch.Tensor | None, text_BTC: torch.Tensor, mask_BT: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        if cache is not None and "ca_k" in cache:  # the text is the same at every scale
            k, v = cache["ca_k"], cache["ca_v"]
        else:
            k, v = self.text_kv(text_BTC)
            if cache is not None:
                cache["ca_k"], cache["ca_v"] = k, v
        B = text_BTC.shape[0]
        if self.pool:
            q = self.mat_q.expand(B, -1, -1).unsqueeze(2)  # [B, H, 1, c]
        else:
            q = self.mat_q(x_BLC).view(B, x_BLC.shape[1], self.heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.to(v.dtype), k, v, attn_mask=mask_BT[:, None, None, :],
                                             scale=1 / math.sqrt(self.head_dim))
        return self.proj(out.transpose(1, 2).reshape(B, q.shape[2], -1))


class TextPool(nn.Module):
    """The text's summary vector (the start token and the AdaLN condition): attention pooling."""

    def __init__(self, text_dim: int, dim: int, heads: int):
        super().__init__()
        self.ca = CrossAttention(dim, text_dim, heads, pool=True)

    def forward(self, text_BTC: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
        return self.ca(None, text_BTC, mask_BT).squeeze(1)


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CrossAttnBlock(nn.Module):
    """Self-attention, cross-attention to the text, MLP. Six modulation vectors per row come from
    the shared AdaLN projection of the text summary plus this block's learned offset `ada_gss`:
        x += gamma1 * sa(LN(x) * (1 + scale1) + shift1)
        x += ca(LN_affine(x), text)
        x += gamma2 * ffn(LN(x) * (1 + scale2) + shift2)"""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.eps = eps
        self.sa = SelfAttention(dim, heads)
        self.ca = CrossAttention(dim, dim, heads)
        self.ffn = FFN(dim, hidden)
        self.ca_norm = nn.LayerNorm(dim, eps=eps)
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim) / dim**0.5)

    def forward(self, x_BLC: torch.Tensor, gss_B16C: torch.Tensor, text_BTC: torch.Tensor, mask_BT: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], mask_LL: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + gss_B16C).unbind(2)
        x_BLC = x_BLC + self.sa(ada_norm(x_BLC, scale1, shift1, self.eps), rope, mask_LL, cache).mul(gamma1)
        x_BLC = x_BLC + self.ca(self.ca_norm(x_BLC), text_BTC, mask_BT, cache).float()
        return x_BLC + self.ffn(ada_norm(x_BLC, scale2, shift2, self.eps)).mul(gamma2)


class BlockChunk(nn.Module):
    """A run of consecutive blocks: the released 2B/8B/125M files group blocks this way
    (`block_chunks.<c>.module.<j>.*`)."""

    def __init__(self, blocks: list[CrossAttnBlock]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, dim: int, cond_dim: int, eps: float):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.dim).unbind(2)
        return ada_norm(x_BLC, scale, shift, self.eps)
