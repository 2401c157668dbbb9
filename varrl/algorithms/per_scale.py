"""Per-scale Monte-Carlo advantages: VMR at several splits, each segment of grids credited with the
change in soft value it caused (VinePPO's per-step MC advantages, with a segment of grids as the
step). With splits m_1 < ... < m_J of a T-step schedule, a trajectory's segments are

    segment 1:      grids 1..m_1          credited  V(s_m1) - V(s_0)
    segment j:      grids m_{j-1}+1..m_j  credited  V(s_mj) - V(s_m{j-1})
    segment J+1:    grids m_J+1..T        credited  R - V(s_mJ)

where V(s_m) is the soft value of K completions from the trajectory's own state after m grids and
R its final reward. The sum over segments telescopes to R - V(s_0). V(s_0) is the group baseline:
each segment's deltas are centred (and scaled, as `rl.adv_norm` says) over the group by
`group_advantages`, and centring segment 1 subtracts exactly the group mean of V(s_m1), which is
V(s_0) estimated from every completion of the group. Centring the later segments removes what
they share over the group, e.g. the gap between a soft value (eta) and a single reward."""

from __future__ import annotations

import torch

from varrl.algorithms.grpo import AdvNorm, group_advantages


def segments(splits: list[int], num_steps: int) -> list[list[int]]:
    """0-based steps of each segment: [0..m_1-1], [m_1..m_2-1], ..., [m_J..T-1]."""
    if not splits:
        raise ValueError("per-scale advantages need at least one split")
    if any(b <= a for a, b in zip(splits, splits[1:])) or not 1 <= splits[0] or not splits[-1] < num_steps:
        raise ValueError(f"splits must increase strictly inside 1..{num_steps - 1}, got {splits}")
    bounds = [0, *splits, num_steps]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def segment_returns(values_BJ: torch.Tensor, rewards_B: torch.Tensor) -> torch.Tensor:
    """[B, J+1]: V_1, V_2 - V_1, ..., V_J - V_{J-1}, R - V_J. The first column is V(s_m1) itself:
    its group centring subtracts V(s_0). NaN (a value or reward that does not apply) propagates."""
    if values_BJ.dim() != 2 or values_BJ.shape[0] != rewards_B.shape[0]:
        raise ValueError(f"values must be [B, J] for {rewards_B.shape[0]} rewards, got {tuple(values_BJ.shape)}")
    v = values_BJ.double()
    cols = [v[:, 0]] + [v[:, j] - v[:, j - 1] for j in range(1, v.shape[1])] + [rewards_B.double() - v[:, -1]]
    return torch.stack(cols, dim=1).to(values_BJ.dtype)


def per_scale_advantages(values_BJ: torch.Tensor, rewards_B: torch.Tensor, group_B: torch.Tensor,
                         norm: AdvNorm = "group", clip: float | None = None,
                         std_floor: float = 0.0) -> torch.Tensor:
    """[B, J+1] advantages, one per segment: each column of `segment_returns` through
    `group_advantages` (centred over the group, scaled by `norm` and `std_floor`; NaN rows -> 0)."""
    deltas_BS = segment_returns(values_BJ, rewards_B)
    cols = [group_advantages(deltas_BS[:, s], group_B, norm, clip=clip, std_floor=std_floor)
            for s in range(deltas_BS.shape[1])]
    return torch.stack(cols, dim=1)


def step_advantages(adv_BS: torch.Tensor, segs: list[list[int]], steps: list[int]) -> list[torch.Tensor]:
    """Per trained step (in the order of `steps`), the [B] advantage of the segment holding it."""
    seg_of = {t: s for s, seg in enumerate(segs) for t in seg}
    return [adv_BS[:, seg_of[t]] for t in steps]
