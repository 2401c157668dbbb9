"""Multi-scale residual vector quantiser (the "VQ" of a VAR tokenizer, arXiv 2404.02905).

Encoding a feature map f (C x H x W, H = W = last grid side) scale by scale:
  for each grid side s_k: z_k = area-downsample(f - f_hat, s_k); idx_k = nearest code of z_k;
  f_hat += phi_k(upsample(codebook[idx_k]))
so that every scale quantises what the coarser scales left unexplained. The phi convolutions are
shared over ranges of scales (n_phi of them for all K scales).
The same arithmetic, run incrementally, gives the transformer's teacher-forcing inputs: the input
for scale k+1 is f_hat after scales 1..k, area-downsampled to grid k+1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Phi(nn.Module):
    """A residual 3x3 conv that refines an upsampled code map: x*(1-r) + conv(x)*r."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        # Start as the identity, so that at initialisation f_hat is exactly the sum of the codes.
        nn.init.dirac_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.ratio = ratio

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw * (1 - self.ratio) + self.conv(h_BChw) * self.ratio


class ResidualDecoding:
    """Decoding shared by every multi-scale residual quantiser (ours and the published VAR one):
    a subclass provides `sides`, `num_scales` and `code_map(k, idx)`, grid k's contribution to
    f_hat at the finest size."""

    sides: tuple[int, ...]
    num_scales: int

    def idx_to_fhat(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """Sum of the code maps of grids 1..m at the finest size (a prefix gives a coarse preview)."""
        f_hat = None
        for k, idx_Bl in enumerate(idx_list):
            h = self.code_map(k, idx_Bl)
            f_hat = h if f_hat is None else f_hat + h
        return f_hat

    def add_scale(self, f_hat: torch.Tensor | None, k: int, idx_Bl: torch.Tensor):
        """One step of decoding: returns (new f_hat, transformer input for scale k+1 [B, s*s, C] or None)."""
        h = self.code_map(k, idx_Bl)
        f_hat = h if f_hat is None else f_hat + h
        if k + 1 >= self.num_scales:
            return f_hat, None
        s = self.sides[k + 1]
        nxt = F.interpolate(f_hat, size=(s, s), mode="area") if s != self.sides[-1] else f_hat
        return f_hat, nxt.flatten(2).transpose(1, 2)

    def teacher_inputs(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """Inputs for scales 2..K given all K index grids: [B, L - 1, C] (scale 1 is the start token)."""
        f_hat, chunks = None, []
        for k, idx_Bl in enumerate(idx_list[:-1]):
            f_hat, nxt = self.add_scale(f_hat, k, idx_Bl)
            chunks.append(nxt)
        return torch.cat(chunks, dim=1)


class MultiScaleQuantizer(ResidualDecoding, nn.Module):
    def __init__(self, vocab_size: int, dim: int, sides: tuple[int, ...], n_phi: int = 4,
                 phi_ratio: float = 0.5, beta: float = 0.25, ema_decay: float = 0.99):
        super().__init__()
        self.vocab_size, self.dim, self.sides, self.beta = vocab_size, dim, tuple(sides), beta
        self.ema_decay = ema_decay
        self.embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embedding.weight, 0.0, 0.1)
        # The codebook is a running k-means of the residuals it quantises (EMA updates, no
        # gradient): far less prone to collapse than a gradient-trained codebook on short runs.
        self.embedding.weight.requires_grad_(False)
        self.register_buffer("ema_count", torch.ones(vocab_size))
        self.register_buffer("ema_sum", self.embedding.weight.detach().clone())
        self.phis = nn.ModuleList([Phi(dim, phi_ratio) for _ in range(n_phi)])

    @property
    def num_scales(self) -> int:
        return len(self.sides)

    def phi(self, k: int) -> Phi:
        """Scale k (0-based) uses the phi whose share of the scale range is nearest k/(K-1)."""
        K, n = self.num_scales, len(self.phis)
        pos = k / max(1, K - 1)
        ticks = torch.linspace(1 / 3 / n, 1 - 1 / 3 / n, n)
        return self.phis[int((ticks - pos).abs().argmin())]

    def lookup(self, z_BCl: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (Euclidean) for each column of z [B, C, l] -> [B, l]."""
        z_NC = z_BCl.permute(0, 2, 1).reshape(-1, self.dim)
        E = self.embedding.weight
        d_NV = z_NC.pow(2).sum(1, keepdim=True) - 2 * z_NC @ E.T + E.pow(2).sum(1)[None]
        return d_NV.argmin(1).view(z_BCl.shape[0], -1)

    def code_map(self, k: int, idx_Bl: torch.Tensor) -> torch.Tensor:
        """Scale k's contribution to f_hat at full resolution: phi_k(upsample(codebook[idx]))."""
        s, S = self.sides[k], self.sides[-1]
        h_BCss = self.embedding(idx_Bl).permute(0, 2, 1).reshape(-1, self.dim, s, s)
        if s != S:
            h_BCss = F.interpolate(h_BCss, size=(S, S), mode="bicubic")
        return self.phi(k)(h_BCss)

    def forward(self, f_BCHW: torch.Tensor):
        """Quantise; returns (f_hat with straight-through gradient, idx per scale, vq loss)."""
        f_detached = f_BCHW.detach()
        f_rest = f_detached.clone()
        f_hat = torch.zeros_like(f_detached)
        idx_list: list[torch.Tensor] = []
        z_seen: list[torch.Tensor] = []
        loss = f_BCHW.new_zeros(())
        for k, s in enumerate(self.sides):
            z = F.interpolate(f_rest, size=(s, s), mode="area") if s != self.sides[-1] else f_rest
            idx_Bl = self.lookup(z.flatten(2))
            h = self.code_map(k, idx_Bl)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            idx_list.append(idx_Bl)
            z_seen.append(z.flatten(2).transpose(1, 2).reshape(-1, self.dim))
            # Phi term pulls f_hat to the encoder output; commitment term pulls the encoder to f_hat.
            loss = loss + F.mse_loss(f_hat, f_detached) + self.beta * F.mse_loss(f_hat.detach(), f_BCHW)
        if self.training:
            z_NC = torch.cat(z_seen)
            self._ema_update_(z_NC, torch.cat([i.flatten() for i in idx_list]))
            # A thinned sample of this batch's residuals: candidates for restarting dead codes.
            self.recent_residuals = z_NC[::5].detach()
        # Straight-through: the value is f_hat, the gradient reaches the encoder unchanged.
        f_st = f_hat.detach() + (f_BCHW - f_detached)
        return f_st, idx_list, loss / self.num_scales

    @torch.no_grad()
    def _ema_update_(self, z_NC: torch.Tensor, idx_N: torch.Tensor) -> None:
        d = self.ema_decay
        count_V = torch.bincount(idx_N, minlength=self.vocab_size).to(z_NC.dtype)
        sum_VC = torch.zeros_like(self.ema_sum).index_add_(0, idx_N, z_NC)
        self.ema_count.mul_(d).add_(count_V, alpha=1 - d)
        self.ema_sum.mul_(d).add_(sum_VC, alpha=1 - d)
        n = self.ema_count.sum()
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        smoothed = (self.ema_count + 1e-5) / (n + self.vocab_size * 1e-5) * n
        self.embedding.weight.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def encode(self, f_BCHW: torch.Tensor) -> list[torch.Tensor]:
        f_rest = f_BCHW.clone()
        idx_list = []
        for k, s in enumerate(self.sides):
            z = F.interpolate(f_rest, size=(s, s), mode="area") if s != self.sides[-1] else f_rest
            idx_Bl = self.lookup(z.flatten(2))
            f_rest -= self.code_map(k, idx_Bl)
            idx_list.append(idx_Bl)
        return idx_list

    @torch.no_grad()
    def restart_dead_codes_(self, threshold: float, generator=None) -> int:
        """Move codes whose EMA use count is below `threshold` onto random residual vectors of the
        last training batch; returns how many moved."""
        z_NC = getattr(self, "recent_residuals", None)
        dead = (self.ema_count < threshold).nonzero().flatten()
        if dead.numel() == 0 or z_NC is None or z_NC.shape[0] == 0:
            return 0
        pick = torch.randint(0, z_NC.shape[0], (dead.numel(),), generator=generator)
        self.embedding.weight[dead] = z_NC[pick].to(self.embedding.weight.dtype)
        self.ema_sum[dead] = self.embedding.weight[dead]
        self.ema_count[dead] = 1.0
        return int(dead.numel())
