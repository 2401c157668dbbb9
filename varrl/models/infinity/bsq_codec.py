"""The convolutional encoder and decoder of Infinity's BSQ tokenizer (official
`infinity/models/bsq_vae/flux_vqgan.py`, image mode: 2-D convs, no attention blocks).

Module and parameter names follow the released state dicts: every conv sits in a wrapper as
`<name>.conv.{weight,bias}`, every GroupNorm as `<name>.norm.{weight,bias}`.

Encoder: conv_in; per level i a stack of residual blocks (`down.i.block.j`) and, for the first
log2(patch) levels, a stride-2 conv after zero padding on the bottom and right (`down.i.downsample`);
two middle blocks; GroupNorm, swish, conv_out to d channels. Decoder: conv_in from d channels;
two middle blocks; levels from the coarsest down to 0, each num_res_blocks + 1 blocks then, for
levels 1..log2(patch), a nearest 2x upsample and a conv (`up.i.upsample`); GroupNorm, swish,
conv_out to RGB in [-1, 1] (clamped by the caller).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)  # spelled as the official code does (F.silu may round differently)


def norm_groups(channels: int) -> int:
    """GroupNorm groups of the official `Normalize`: 32 when they divide the channels, else 24."""
    for g in (32, 24):
        if channels % g == 0:
            return g
    raise ValueError(f"the BSQ tokenizer's GroupNorm needs channels divisible by 32 or 24, got {channels}")


class Conv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Norm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups(channels), channels, eps=1e-6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = Norm(cin), Conv(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = Norm(cout), Conv(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = Conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # torch convs pad symmetrically; the official pads right/bottom


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    """One resolution level: `block` (residual blocks), an empty `attn` list as in the official
    layout (image tokenizers have no attention), and an optional resampler."""

    def __init__(self, channels: list[int], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(ResBlock(a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.attn = nn.ModuleList()
        if resample is not None:
            self.add_module(name, resample)


class Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1, self.block_2 = ResBlock(c, c), ResBlock(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    """Image [B, 3, H, W] in [-1, 1] -> latent [B, d, H/patch, W/patch]."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int, n_down: int):
        super().__init__()
        self.conv_in = Conv(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        c = ch
        for i, m in enumerate(ch_mult):
            c_in = ch * (1 if i == 0 else ch_mult[i - 1])
            chans = [c_in] + [ch * m] * num_res_blocks
            c = ch * m
            self.down.append(Level(chans, Downsample(c) if i < n_down else None, "downsample"))
        self.mid = Mid(c)
        self.norm_out, self.conv_out = Norm(c), Conv(c, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for blk in level.block:
                h = blk(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latent [B, d, h, w] -> image [B, 3, h*patch, w*patch] (unclamped, about [-1, 1])."""

    def __init__(self, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, z_channels: int, n_up: int):
        super().__init__()
        c = ch * ch_mult[-1]
        self.conv_in = Conv(z_channels, c, 3, padding=1)
        self.mid = Mid(c)
        levels = []
        for i in reversed(range(len(ch_mult))):
            chans = [c] + [ch * ch_mult[i]] * (num_res_blocks + 1)
            c = ch * ch_mult[i]
            levels.append(Level(chans, Upsample(c) if 1 <= i <= n_up else None, "upsample"))
        self.up = nn.ModuleList(reversed(levels))  # up[i] is level i, as in the official layout
        self.norm_out, self.conv_out = Norm(c), Conv(c, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for blk in level.block:
                h = blk(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))
