"""The multi-scale residual VQ tokenizer of the published VAR checkpoints (`vae_ch160v4096z32.pth`).

Parameter names follow the published state-dict layout. Grids are decoded by summing, at the
finest grid's size, each grid's code map upsampled bicubically and passed through a residual
conv phi (phi(h) = (1 - r) h + r conv3x3(h), r = 0.5); the transformer's next input is that sum
area-downsampled to the next grid. Which of the K phi convs grid t uses: `phi_index`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from varrl.models.quantizer import ResidualDecoding
from varrl.models.var.transformer import PATCH_NUMS_256


@dataclass
class VaeConfig:
    """Shape of the VQ-VAE (the published tokenizer: the defaults)."""

    vocab_size: int = 4096
    code_dim: int = 32
    """channels of the latent and of every code vector (Cvae)"""
    ch: int = 160
    """base channel width of encoder and decoder"""
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    using_sa: bool = True
    """self-attention in the lowest-resolution level"""
    using_mid_sa: bool = True
    quant_resi: float = 0.5
    """r in phi(h) = (1 - r) h + r conv(h)"""
    phi_sharing: str = "partial"
    """'partial' (K convs picked by position), 'shared' (one conv) or 'none' (one conv per grid)"""
    phi_count: int = 4
    """K: the number of phi convs (partial, none)"""
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    ema_rows: int = 10
    """rows of the stored code-usage statistics (the grids the tokenizer was trained with)"""

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def phi_ticks(K: int) -> np.ndarray:
    """Positions in [0, 1] of the K phi convs: evenly spaced, margins 1/(3K) for K = 4, else 1/(2K)."""
    margin = 1 / 3 / K if K == 4 else 1 / 2 / K
    return np.linspace(margin, 1 - margin, K)


def phi_index(t: int, num_grids: int, K: int) -> int:
    """The phi conv of 0-based grid t: the tick nearest to t / (T - 1) (the first one on a tie)."""
    at = t / (num_grids - 1) if num_grids > 1 else 0.0
    return int(np.argmin(np.abs(phi_ticks(K) - at)))


class Phi(nn.Conv2d):
    def __init__(self, dim: int, ratio: float):
        super().__init__(dim, dim, kernel_size=3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.ratio) + super().forward(h_BChw).mul(self.ratio)


class PhiSet(nn.Module):
    """The K phi convs under the published key names: qresi_ls.k (partial), qresi (shared), k (none)."""

    def __init__(self, dim: int, ratio: float, sharing: str, K: int):
        super().__init__()
        self.sharing = sharing
        self.K = 1 if sharing == "shared" else K
        if sharing == "partial":
            self.qresi_ls = nn.ModuleList([Phi(dim, ratio) for _ in range(K)])
        elif sharing == "shared":
            self.qresi = Phi(dim, ratio)
        elif sharing == "none":
            for k in range(K):
                self.add_module(str(k), Phi(dim, ratio))
        else:
            raise ValueError(f"phi_sharing must be 'partial', 'shared' or 'none', got {sharing!r}")

    def at(self, t: int, num_grids: int) -> Phi:
        if self.sharing == "shared":
            return self.qresi
        k = phi_index(t, num_grids, self.K)
        return self.qresi_ls[k] if self.sharing == "partial" else getattr(self, str(k))


class Quantizer(ResidualDecoding, nn.Module):
    def __init__(self, cfg: VaeConfig):
        super().__init__()
        self.cfg, self.dim = cfg, cfg.code_dim
        self.sides = tuple(cfg.patch_nums)
        self.num_scales = len(self.sides)
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.code_dim)
        self.quant_resi = PhiSet(cfg.code_dim, cfg.quant_resi, cfg.phi_sharing, cfg.phi_count)
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(cfg.ema_rows, cfg.vocab_size))

    def code_map(self, k: int, idx_Bl: torch.Tensor) -> torch.Tensor:
        """Grid k's contribution to f_hat: phi_k(bicubic-up(codes)) at the finest size [B, Cvae, H, W]."""
        s, H = self.sides[k], self.sides[-1]
        h = self.embedding(idx_Bl).transpose(1, 2).reshape(idx_Bl.shape[0], self.dim, s, s)
        if k < self.num_scales - 1:
            h = F.interpolate(h, size=(H, H), mode="bicubic")
        return self.quant_resi.at(k, self.num_scales)(h)

    def encode(self, f_BChw: torch.Tensor) -> list[torch.Tensor]:
        """Residual quantisation of a latent: the index grid of every scale (nearest code, L2)."""
        rest, out, W = f_BChw.clone(), [], self.embedding.weight
        for k, s in enumerate(self.sides):
            z = rest if k == self.num_scales - 1 else F.interpolate(rest, size=(s, s), mode="area")
            z_NC = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
            d = z_NC.square().sum(1, keepdim=True) + W.square().sum(1) - 2 * z_NC @ W.T
            idx = d.argmin(1).view(f_BChw.shape[0], s * s)
            rest = rest - self.code_map(k, idx)
            out.append(idx)
        return out


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return self.nin_shortcut(x) + self.conv2(F.silu(self.norm2(h)))


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, residual."""

    def __init__(self, c: int):
        super().__init__()
        self.norm, self.qkv, self.proj_out = _norm(c), nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, 3, C, H * W).transpose(2, 3).unbind(1)  # [B, HW, C]
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class _Level(nn.Module):
    """One resolution level: res blocks (+ attention), then a resampler (named as in the files)."""

    def __init__(self, blocks, attn, resample_name: str | None, resampler: nn.Module | None):
        super().__init__()
        self.block, self.attn = nn.ModuleList(blocks), nn.ModuleList(attn)
        if resample_name:
            self.add_module(resample_name, resampler)

    def run(self, h):
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class Down(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right/bottom so stride 2 halves the side


class Up(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, c: int, attn: bool):
        super().__init__()
        self.block_1, self.block_2 = ResBlock(c, c), ResBlock(c, c)
        self.attn_1 = AttnBlock(c) if attn else nn.Identity()

    def forward(self, h):
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: VaeConfig):
        super().__init__()
        ch, mult, n = cfg.ch, cfg.ch_mult, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        levels, cin = [], ch
        for i, m in enumerate(mult):
            cout, last = ch * m, i == n - 1
            blocks = [ResBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks)]
            attn = [AttnBlock(cout) for _ in blocks] if last and cfg.using_sa else []
            levels.append(_Level(blocks, attn, None if last else "downsample", None if last else Down(cout)))
            cin = cout
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(cin, cfg.using_mid_sa)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, cfg.code_dim, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for lvl in self.down:
            h = lvl.run(h)
            if hasattr(lvl, "downsample"):
                h = lvl.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VaeConfig):
        super().__init__()
        ch, mult, n = cfg.ch, cfg.ch_mult, len(cfg.ch_mult)
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.code_dim, cin, 3, padding=1)
        self.mid = _Mid(cin, cfg.using_mid_sa)
        levels = [None] * n  # up[i] is level i; they run from the coarsest (n-1) to 0
        for i in reversed(range(n)):
            cout = ch * mult[i]
            blocks = [ResBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks + 1)]
            attn = [AttnBlock(cout) for _ in blocks] if i == n - 1 and cfg.using_sa else []
            levels[i] = _Level(blocks, attn, "upsample" if i else None, Up(cout) if i else None)
            cin = cout
        self.up = nn.ModuleList(levels)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for lvl in reversed(self.up):
            h = lvl.run(h)
            if hasattr(lvl, "upsample"):
                h = lvl.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQVAE(nn.Module):
    def __init__(self, cfg: VaeConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantize = Quantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.code_dim, cfg.code_dim, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(cfg.code_dim, cfg.code_dim, 3, padding=1)

    @property
    def quantizer(self) -> Quantizer:  # the name the policy code uses for every tokenizer
        return self.quantize

    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat [B, Cvae, h, w] -> image [B, 3, 16h, 16w] in [0, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1).add(1).mul(0.5)

    def decode(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        return self.decode_fhat(self.quantize.idx_to_fhat(idx_list))

    def encode(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        """Image in [0, 1] -> the index grid of every scale."""
        return self.quantize.encode(self.quant_conv(self.encoder(img_B3HW * 2 - 1)))
