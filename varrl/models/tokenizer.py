"""A VAR-style multi-scale residual VQ-VAE: conv encoder -> multi-scale quantiser -> conv decoder.

Images are float [B, 3, H, W] in [0, 1] at the API; the networks work in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from varrl.models.quantizer import MultiScaleQuantizer
from varrl.schedule import ScaleSchedule


@dataclass
class TokenizerConfig:
    """Shape of the VQ-VAE; the scale sides define the schedule every model on it shares."""

    image_size: int = 128
    sides: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 11, 16)
    vocab_size: int = 1024
    code_dim: int = 32
    channels: tuple[int, ...] = (32, 64, 128, 128)
    """channels at each resolution level, full size first; len-1 = number of 2x downsamplings"""
    res_blocks: tuple[int, ...] = (0, 1, 1, 2)
    """residual blocks at each level of the encoder (the decoder mirrors them)"""
    n_phi: int = 4
    phi_ratio: float = 0.5
    beta: float = 0.25

    def schedule(self) -> ScaleSchedule:
        return ScaleSchedule.square(self.sides, self.image_size)

    def __post_init__(self) -> None:
        down = 2 ** (len(self.channels) - 1)
        if self.image_size // down != self.sides[-1]:
            raise ValueError(
                f"image_size {self.image_size} / {down} (from {len(self.channels) - 1} downsamplings) "
                f"must equal the last grid side {self.sides[-1]}"
            )
        if len(self.res_blocks) != len(self.channels):
            raise ValueError("res_blocks needs one entry per level in channels")


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, c // 4), c, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch = cfg.channels
        layers: list[nn.Module] = [nn.Conv2d(3, ch[0], 3, padding=1)]
        for lvl, c in enumerate(ch):
            cin = ch[max(0, lvl - 1)]
            if lvl > 0:
                layers.append(nn.Conv2d(cin, c, 4, stride=2, padding=1))
            layers += [ResBlock(c, c) for _ in range(cfg.res_blocks[lvl])]
        layers += [_norm(ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.code_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        ch = cfg.channels[::-1]
        rb = cfg.res_blocks[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, ch[0], 3, padding=1)]
        for lvl, c in enumerate(ch):
            if lvl > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[lvl - 1], c, 3, padding=1)]
            # The decoder gets one more block per level: sharp glyph edges are made here.
            layers += [ResBlock(c, c) for _ in range(rb[lvl] + 1)]
        layers += [_norm(ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class VQTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = MultiScaleQuantizer(cfg.vocab_size, cfg.code_dim, cfg.sides, cfg.n_phi,
                                             cfg.phi_ratio, cfg.beta)

    @property
    def schedule(self) -> ScaleSchedule:
        return self.cfg.schedule()

    def forward(self, img_B3HW: torch.Tensor):
        """Reconstruct; returns (reconstruction in [0,1] space unclamped, idx per scale, vq loss)."""
        f = self.encoder(img_B3HW * 2 - 1)
        f_hat, idx_list, vq_loss = self.quantizer(f)
        return (self.decoder(f_hat) + 1) / 2, idx_list, vq_loss

    @torch.no_grad()
    def encode(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        """Image in [0, 1] -> list over scales of idx [B, h_k*w_k]."""
        return self.quantizer.encode(self.encoder(img_B3HW * 2 - 1))

    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        return ((self.decoder(f_hat) + 1) / 2).clamp(0, 1)

    def decode(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """List over scales of idx -> image [B, 3, H, W] in [0, 1]."""
        return self.decode_fhat(self.quantizer.idx_to_fhat(idx_list))
