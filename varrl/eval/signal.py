"""Diagnostics of the policy-gradient signal: the score of an image along the sharpening
direction (every grid's logits scaled by its own beta), group-centred rewards that make
E[A * S] an unbiased covariance, and the share of the reward's variance that a prefix of grids
decides. `benchmarks/sharpen_signal.py` and `benchmarks/reward_decided.py` print what they measure."""

from __future__ import annotations

import torch

from varrl.algorithms.grpo import group_advantages


def sharpen_token_scores(logits_BLV: torch.Tensor, idx_BL: torch.Tensor) -> torch.Tensor:
    """[B, L]: each token's d log p / d beta at beta = 1 when its logits are multiplied by beta
    (the drawn token's logit minus the logits' mean under the policy). Truncated logits (-inf
    outside the top-k/top-p set) score the set as fixed: a token alone in its set scores 0."""
    probs = logits_BLV.softmax(-1)
    mean_BL = torch.where(probs > 0, probs * logits_BLV, 0.0).sum(-1)  # 0 * -inf would be NaN
    return logits_BLV.gather(-1, idx_BL.unsqueeze(-1)).squeeze(-1) - mean_BL


def sharpen_scores(logits_BLV: torch.Tensor, idx_BL: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """S [B, T]: d log p / d beta_t at beta = 1 when grid t's logits are multiplied by beta_t."""
    centred_BL = sharpen_token_scores(logits_BLV, idx_BL)
    return torch.stack([centred_BL[:, a:b].sum(1) for a, b in zip(offsets[:-1], offsets[1:])], 1)


def centred_rewards(rewards_B: torch.Tensor, group_B: torch.Tensor) -> torch.Tensor:
    """GRPO's unnormalised advantages (R - its group mean), scaled by n/(n-1) for a group of n
    valid rows so that E[A * S] = Cov(R, S) exactly (S has mean 0 and is independent of the other
    members of its group). NaN rewards stay NaN: callers drop those rows."""
    valid_B = ~torch.isnan(rewards_B)
    _, inv = torch.unique(group_B, return_inverse=True)
    n_B = torch.zeros(int(inv.max()) + 1, dtype=torch.float64).index_add_(0, inv, valid_B.double())[inv]
    adv_B = group_advantages(rewards_B, group_B, "none").double() * n_B / (n_B - 1).clamp(min=1)
    return torch.where(valid_B, adv_B, torch.full_like(adv_B, float("nan"))).to(rewards_B.dtype)


def decided_share(rewards_PGK: torch.Tensor) -> tuple[float, float]:
    """How much of a prompt's reward variance its first grids decide. `rewards_PGK`: P prompts, G
    prefixes each, K completions of each prefix. One-way random-effects ANOVA per prompt: the
    between-prefix component (MSB - MSW) / K and the within-prefix one MSW, averaged over the
    prompts (a prompt whose rewards hold a NaN is left out). Returns (between, within): the
    share decided by the prefix is between / (between + within). The between estimate is
    unbiased, so it can come out below 0 when the prefix decides nothing."""
    r = rewards_PGK.double()
    r = r[~torch.isnan(r).flatten(1).any(1)]
    if len(r) == 0 or r.shape[1] < 2 or r.shape[2] < 2:
        raise ValueError(f"decided_share needs a prompt without NaN, G >= 2 and K >= 2, got {tuple(rewards_PGK.shape)}")
    K = r.shape[2]
    msw_P = r.var(2, unbiased=True).mean(1)
    msb_P = K * r.mean(2).var(1, unbiased=True)
    return float(((msb_P - msw_P) / K).mean()), float(msw_P.mean())
