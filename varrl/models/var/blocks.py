"""Building blocks of the published VAR transformer (FoundationVision VAR), written for varrl.

The module and parameter names follow the published checkpoints' state-dict layout, so a strict
load of `var_d16.pth` .. `var_d36.pth` works; the math is documented on each block."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LOG_SCALE = math.log(100.0)  # the learned per-head logit scale of l2-norm attention is capped at 100


def modulate(x_BLC: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """Affine-free LayerNorm, then x * (1 + scale) + shift (adaptive LayerNorm)."""
    return F.layer_norm(x_BLC, x_BLC.shape[-1:], eps=eps).mul(scale.add(1)).add(shift)


class SelfAttention(nn.Module):
    """Multi-head attention with a q/v bias (k has none), optional l2-normalised q and k.

    Plain mode scales logits by 0.25/sqrt(head_dim); l2 mode normalises q and k per head and
    multiplies q by a learned per-head factor exp(min(s_h, log 100)), so logits lie in [-100, 100]."""

    def __init__(self, dim: int, heads: int, l2_norm: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.l2_norm = heads, dim // heads, l2_norm
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))  # kept: the published files hold it
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), 4.0).log())
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLC: torch.Tensor, bias_11LL: torch.Tensor | None, cache: dict | None) -> torch.Tensor:
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        if type(self.mat_qkv) is nn.Linear:
            qkv = F.linear(x_BLC, self.mat_qkv.weight, bias)  # the published fused call
        else:  # a LoRA-wrapped layer (varrl.policy.lora): call it, so that its adapter acts
            qkv = self.mat_qkv(x_BLC) + bias
        qkv = qkv.view(B, L, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, c]
        scale = 0.25 / math.sqrt(self.head_dim)
        if self.l2_norm:
            q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(MAX_LOG_SCALE).exp())
            k = F.normalize(k, dim=-1)
            scale = 1.0
        if cache is not None:  # sampling: this scale attends to every earlier scale and itself
            if "k" in cache:
                k = torch.cat((cache["k"], k), dim=2)
                v = torch.cat((cache["v"], v), dim=2)
            cache["k"], cache["v"] = k, v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias_11LL, scale=scale)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by the class embedding.

    Six vectors per row (gamma1, gamma2, scale1, scale2, shift1, shift2, in that order) come from
    SiLU + Linear of the condition (`ada_lin`), or, with shared AdaLN, from one projection shared by
    all blocks plus this block's learned offset `ada_gss` [1, 1, 6, C]:
        x += gamma1 * attn(LN(x) * (1 + scale1) + shift1)
        x += gamma2 * ffn(LN(x) * (1 + scale2) + shift2)"""

    def __init__(self, dim: int, heads: int, hidden: int, shared_aln: bool, l2_norm: bool, eps: float):
        super().__init__()
        self.dim, self.eps, self.shared_aln = dim, eps, shared_aln
        self.attn = SelfAttention(dim, heads, l2_norm)
        self.ffn = FFN(dim, hidden)
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, dim) / dim**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x_BLC: torch.Tensor, cond: torch.Tensor, bias_11LL: torch.Tensor | None,
                cache: dict | None) -> torch.Tensor:
        """cond: the class embedding [B, D], or with shared AdaLN the shared projection [B, 1, 6, C]."""
        if self.shared_aln:
            six = self.ada_gss + cond
        else:
            six = self.ada_lin(cond).view(-1, 1, 6, self.dim)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = six.unbind(2)
        x_BLC = x_BLC + self.attn(modulate(x_BLC, scale1, shift1, self.eps), bias_11LL, cache).mul(gamma1)
        return x_BLC + self.ffn(modulate(x_BLC, scale2, shift2, self.eps)).mul(gamma2)


class AdaLNHead(nn.Module):
    """The norm before the output head: LN(x) * (1 + scale) + shift, (scale, shift) from the class embedding."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.dim).unbind(2)
        return modulate(x_BLC, scale, shift, self.eps)

