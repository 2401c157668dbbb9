"""The multi-scale bitwise quantizer of Infinity's BSQ tokenizer, as pure functions.

Bits and codes. A latent cell holds d channels; its token is d bits, bit 1 <-> +1/sqrt(d) and bit
0 <-> -1/sqrt(d) (a corner of the unit hypercube scaled onto the unit sphere; the official code
then L2-normalises that vector again, which we repeat so the codes match it to the last bit).

Tokenizing (official `BitwiseSelfCorrection.flip_requant` without its noise, which is what the
transformer was trained to predict): with z the encoder's latent [B, d, H, W] and S the running
sum (0 at first), for every grid (h_t, w_t) of the schedule
    r_t = area-downsample(z - S) to (h_t, w_t)    (the last grid takes z - S as it is)
    bits_t = r_t / |r_t| > 0 per cell;  q_t = +-1/sqrt(d) (the sign quantization of the normalised r_t)
    S += trilinear-upsample(q_t) to (H, W)

Sampling (official `Infinity.autoregressive_infer_cfg`): the codes of every step's bits are
trilinearly upsampled to the last grid and summed; the transformer's input at step t+1 is that
running sum trilinearly *down*sampled to grid t+1 (the sampler and the trainer both use the
trilinear mode here; the area-downsampled `var_input` of the VAE's own `encode` is unused). The
final latent is the sum over all steps; the decoder turns it into the image.

Spatial patchify (Infinity-8B): the tokenizer's latent has 8 px cells and a token covers 2x2 of
them: token bits [B, h*w, 4d] <-> cell bits [B, 2h*2w, d] by pixel_unshuffle / pixel_shuffle with
factor 2 (token channel 4c + 2i + j is channel c of the cell at row offset i, column offset j), and
the transformer's inputs are pixel-unshuffled the same way.

Layouts are kept as the official code has them (codes are a channels-last view, the interpolations
see the same strides) so that the float results agree bit for bit, not only up to rounding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Grid = tuple[int, int]


def grids_of(schedule) -> list[Grid]:
    """(h, w) per step from a ScaleSchedule (`.grids`), a list of (h, w) or the official (1, h, w)."""
    out = []
    for g in getattr(schedule, "grids", schedule):
        g = tuple(int(v) for v in g)
        if len(g) == 3 and g[0] == 1:
            g = g[1:]
        if len(g) != 2 or min(g) < 1:
            raise ValueError(f"a scale schedule is a list of (h, w) grids, got {g!r}")
        out.append(g)
    if not out:
        raise ValueError("the scale schedule is empty")
    return out


def bit_scale(d: int) -> float:
    """|code| per channel: 1 / sqrt(d) (the official `codebook_scale`)."""
    return 1.0 / math.sqrt(d)


def _check_bits(bits_Bld: torch.Tensor, h: int, w: int, what: str = "bits") -> None:
    if bits_Bld.ndim != 3 or bits_Bld.shape[1] != h * w:
        raise ValueError(f"{what} must be [B, {h}*{w}, d], got {tuple(bits_Bld.shape)}")


def codes_5d(bits_Bhwd: torch.Tensor) -> torch.Tensor:
    """Codes [B, d, 1, h, w] (a channels-last view, as the official `indices_to_codes` returns it)
    of bits [B, h, w, d] (any strides)."""
    s = bit_scale(bits_Bhwd.shape[-1])
    codes = bits_Bhwd.unsqueeze(1).long() * s * 2 - s  # exactly +-s in float32
    codes = F.normalize(codes, dim=-1)
    return codes.permute(0, 4, 1, 2, 3)


def codes_from_bits(bits_Bld: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Float codes [B, d, h, w] of bits [B, h*w, d] in {0, 1} (row-major cells): +-1/sqrt(d),
    L2-normalised per cell as the official code does."""
    _check_bits(bits_Bld, h, w)
    return codes_5d(bits_Bld.reshape(bits_Bld.shape[0], h, w, -1)).squeeze(2)


# -- spatial patchify ---------------------------------------------------------------------------------
def unpatchify_bits(bits_Bld: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Token bits [B, h*w, 4d] -> cell bits as [B, 2h, 2w, d] (the official sampler's unpatchify)."""
    _check_bits(bits_Bld, h, w, "token bits")
    if bits_Bld.shape[-1] % 4:
        raise ValueError(f"patchified tokens hold 4d bits, got {bits_Bld.shape[-1]}")
    x = bits_Bld.reshape(bits_Bld.shape[0], h, w, -1).permute(0, 3, 1, 2)
    return F.pixel_shuffle(x, 2).permute(0, 2, 3, 1)


def patchify_bits(bits_Bhwd: torch.Tensor) -> torch.Tensor:
    """Cell bits [B, H, W, d] -> token bits [B, (H/2)*(W/2), 4d] (the official trainer's patchify)."""
    B, H, W, d = bits_Bhwd.shape
    if H % 2 or W % 2:
        raise ValueError(f"patchify needs an even latent grid, got {H}x{W}")
    x = F.pixel_unshuffle(bits_Bhwd.permute(0, 3, 1, 2), 2)
    return x.permute(0, 2, 3, 1).reshape(B, -1, 4 * d)


# -- sampling side: running sum of codes ----------------------------------------------------------------
def _size(g: Grid) -> tuple[int, int, int]:
    return (1, g[0], g[1])


def accumulate(codes: list[torch.Tensor], grids: list[Grid], patchify: bool = False
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(inputs, summed) from the codes [B, d, 1, h_t, w_t] of steps 0..n-1 (n <= len(grids)) on the
    latent grids `grids`: inputs[t] [B, d (4d with patchify), h', w'] is the transformer's input at
    step t+1 (for t < min(n, T-1)); summed [B, d, H, W] is the sum of the upsampled codes so far
    (the final latent when n = T, else the coarse preview)."""
    T = len(grids)
    if not 1 <= len(codes) <= T:
        raise ValueError(f"need 1..{T} steps of bits for a {T}-step schedule, got {len(codes)}")
    summed, inputs = 0, []
    for t, c in enumerate(codes):
        if tuple(c.shape[-2:]) != grids[t]:
            raise ValueError(f"step {t + 1} holds a {tuple(c.shape[-2:])} grid but the schedule says {grids[t]}")
        if t == T - 1:
            summed = summed + c
            break
        summed = summed + F.interpolate(c, size=_size(grids[-1]), mode="trilinear")
        x = F.interpolate(summed, size=_size(grids[t + 1]), mode="trilinear").squeeze(-3)
        inputs.append(F.pixel_unshuffle(x, 2) if patchify else x)
    return inputs, summed.squeeze(-3)


# -- tokenizing side -------------------------------------------------------------------------------------
def sign_quantize(residual_Bd1hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(quantized [B, d, 1, h, w] channels-last view, bits [B, h, w, d] long) of a residual map:
    each cell L2-normalised, then +-1/sqrt(d) by sign (bit 1 where the normalised value is > 0).
    The quantized value is formed as x + (zhat - x), the official straight-through arithmetic,
    so its rounding matches."""
    B, d, _, h, w = residual_Bd1hw.shape
    x = residual_Bd1hw.permute(0, 2, 3, 4, 1).reshape(B, h * w, 1, d)
    x = F.normalize(x.float(), dim=-1)
    zhat = torch.where(x > 0, torch.ones((), dtype=x.dtype), -torch.ones((), dtype=x.dtype)) * (1.0 / d**0.5)
    q = x + (zhat - x)
    bits = (q > 0).long().reshape(B, 1, h, w, d)[:, 0]
    return q.reshape(B, 1, h, w, d).permute(0, 4, 1, 2, 3), bits


def multiscale_bits(z_BdHW: torch.Tensor, grids: list[Grid]) -> list[torch.Tensor]:
    """Bits [B, h_t, w_t, d] per grid of the latent z (the last grid must be z's own)."""
    if tuple(z_BdHW.shape[-2:]) != grids[-1]:
        raise ValueError(f"the latent is {tuple(z_BdHW.shape[-2:])} but the schedule ends at {grids[-1]}")
    z = z_BdHW.float().unsqueeze(2)
    full, T = _size(grids[-1]), len(grids)
    summed, out = 0, []
    for t, g in enumerate(grids):
        r = z - summed
        if t != T - 1:
            r = F.interpolate(r, size=_size(g), mode="area").contiguous()
        q, bits = sign_quantize(r)
        out.append(bits)
        summed = summed + F.interpolate(q, size=full, mode="trilinear").contiguous()
    return out
