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
    sides: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 11, 16, 16)
    """grid side of each step. The last grid comes twice: two residual codes per token cell. With
    one 16x16 stage, OCR read 51% of words on reconstructions (a 4096-code book: 53%); with two,
    86% (same encoder, 763 tokens instead of 507)."""
    vocab_size: int = 1024
    code_dim: int = 32
    channels: int = 192
    """width of the encoder and decoder, which both work at the last grid's resolution"""
    res_blocks: int = 3
    """residual blocks in the encoder and in the decoder"""
    refine_channels: int = 32
    """width of the full-resolution convolution that smooths patch seams after unpatchifying"""
    n_phi: int = 4
    phi_ratio: float = 0.5
    beta: float = 0.25

    def schedule(self) -> ScaleSchedule:
        return ScaleSchedule.square(self.sides, self.image_size)

    @property
    def patch(self) -> int:
        return self.image_size // self.sides[-1]

    def __post_init__(self) -> None:
        from varrl.config_checks import Range, at_least, check_ranges

        check_ranges(self, {"image_size": at_least(1), "sides": at_least(1), "vocab_size": at_least(2),
                            "code_dim": at_least(1), "channels": at_least(4), "res_blocks": at_least(0),
                            "refine_channels": at_least(1), "n_phi": at_least(1), "phi_ratio": Range(0, 1),
                            "beta": at_least(0)})
        if not self.sides:
            from varrl.config_types import FieldError

            raise FieldError("sides", "is empty: give the grid side of each step, e.g. [1, 2, 4, 8]")
        if self.image_size % self.sides[-1]:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the last grid side {self.sides[-1]}")
        if self.channels % 4:
            raise ValueError(f"channels must be a multiple of 4 (group norm), got {self.channels}")


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


# Both networks work on patches: pixels are folded into channels (p x p x 3 per token cell) and
# all the convolutions run at the token grid's resolution. Each is a linear map (initialised by
# PCA of image patches: `VQTokenizer.init_pca_`) plus a residual conv network that starts at zero.
# Measured here: PCA with 32 components per 8x8 patch alone keeps 100% OCR word accuracy, while
# a strided conv pyramid trained from scratch read under 10% after 1,500 CPU steps: starting
# from the linear solution leaves training to make the features easy to quantise.
class Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        C, p = cfg.channels, cfg.patch
        self.unpatch = nn.PixelUnshuffle(p)
        self.linear = nn.Conv2d(3 * p * p, cfg.code_dim, 1)
        self.net = nn.Sequential(
            nn.Conv2d(3 * p * p, C, 1),
            *[ResBlock(C, C) for _ in range(cfg.res_blocks)],
            _norm(C), nn.SiLU(), nn.Conv2d(C, cfg.code_dim, 1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.unpatch(x)
        return self.linear(x) + self.net(x)


class Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        C, p, R = cfg.channels, cfg.patch, cfg.refine_channels
        self.linear = nn.Conv2d(cfg.code_dim, 3 * p * p, 1)
        self.net = nn.Sequential(
            nn.Conv2d(cfg.code_dim, C, 3, padding=1),
            *[ResBlock(C, C) for _ in range(cfg.res_blocks)],
            _norm(C), nn.SiLU(), nn.Conv2d(C, 3 * p * p, 1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.patch = nn.PixelShuffle(p)
        self.refine = nn.Sequential(nn.Conv2d(3, R, 3, padding=1), nn.SiLU(), nn.Conv2d(R, 3, 3, padding=1))
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = self.patch(self.linear(f) + self.net(f))
        return x + self.refine(x)


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

    @torch.no_grad()
    def init_pca_(self, img_B3HW: torch.Tensor) -> float:
        """Set the linear encoder/decoder maps to the top-`code_dim` principal components of the
        patches of these images; returns the share of patch variance they keep."""
        x_NP = self.encoder.unpatch(img_B3HW * 2 - 1).permute(0, 2, 3, 1).reshape(-1, self.encoder.linear.in_channels)
        mu_P = x_NP.mean(0)
        _, S, Vt = torch.linalg.svd(x_NP - mu_P, full_matrices=False)
        k = self.cfg.code_dim
        comps_KP = Vt[:k]
        self.encoder.linear.weight.copy_(comps_KP[:, :, None, None])
        self.encoder.linear.bias.copy_(-comps_KP @ mu_P)
        self.decoder.linear.weight.copy_(comps_KP.T[:, :, None, None])
        self.decoder.linear.bias.copy_(mu_P)
        return float(S[:k].pow(2).sum() / S.pow(2).sum())

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
