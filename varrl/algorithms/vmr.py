"""VMR (value as middle return): the soft value of a middle state from K on-policy completions, and
which steps each stage trains.

Convention (stated once, here and in the README): the prefix generates grids 1..m (the state s_m
holds m grids), the suffix generates grids m+1..T. In 0-based step indices the prefix trains
0..m-1 and the suffix m..T-1."""

from __future__ import annotations

import math

import torch


def soft_value(rewards_PK: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """V = eta * log(mean_k exp(R_k / eta)) per row of K completion rewards -> [P].

    Computed as eta * (logsumexp(R/eta) - log K), which never overflows. As eta grows V tends to
    the mean of the rewards; as eta shrinks, to their max. NaN rewards are left out of their row
    (a row with no valid reward gives NaN)."""
    if eta <= 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    if rewards_PK.dim() != 2:
        raise ValueError(f"soft_value expects rewards [P, K], got shape {tuple(rewards_PK.shape)}")
    r = rewards_PK.double() / eta
    valid = ~torch.isnan(r)
    count = valid.sum(dim=1)
    lse = torch.logsumexp(torch.where(valid, r, torch.full_like(r, -math.inf)), dim=1)
    v = eta * (lse - torch.log(count.clamp(min=1).double()))
    return torch.where(count > 0, v, torch.full_like(v, math.nan)).to(rewards_PK.dtype)


def stage_steps(num_steps: int, m: int) -> tuple[list[int], list[int]]:
    """0-based steps trained by the prefix stage (grids 1..m) and the suffix stage (grids m+1..T)."""
    if not 1 <= m < num_steps:
        raise ValueError(f"the VMR split m must be in 1..{num_steps - 1} for a {num_steps}-step schedule, got {m}")
    return list(range(m)), list(range(m, num_steps))
