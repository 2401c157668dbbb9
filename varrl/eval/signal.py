"""Diagnostics of the policy-gradient signal: the score of an image along the sharpening
direction (every grid's logits scaled by its own beta), and group-centred rewards that make
E[A * S] an unbiased covariance. `benchmarks/sharpen_signal.py` prints what they measure."""

from __future__ import annotations

import torch


def sharpen_scores(logits_BLV: torch.Tensor, idx_BL: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """S [B, T]: d log p / d beta_t at beta = 1 when grid t's logits are multiplied by beta_t."""
    probs = logits_BLV.softmax(-1)
    centred_BL = logits_BLV.gather(-1, idx_BL.unsqueeze(-1)).squeeze(-1) - (probs * logits_BLV).sum(-1)
    return torch.stack([centred_BL[:, a:b].sum(1) for a, b in zip(offsets[:-1], offsets[1:])], 1)


def centred_rewards(rewards_B: torch.Tensor, group_B: torch.Tensor) -> torch.Tensor:
    """R - its group mean, scaled by G/(G-1) so that E[A * S] = Cov(R, S) exactly (S has mean 0
    and is independent of the other members of its group)."""
    out = torch.empty_like(rewards_B)
    for g in group_B.unique():
        at = group_B == g
        n = int(at.sum())
        out[at] = (rewards_B[at] - rewards_B[at].mean()) * (n / max(n - 1, 1))
    return out
