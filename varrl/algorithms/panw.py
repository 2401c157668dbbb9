"""PANW (per-action normalization weighting): a VAR step emits h_t*w_t tokens at once, so a plain
token sum lets the large late grids dominate; weighting step t by k_t = (h_t*w_t)^-alpha evens it.

The weights feed `grpo.aggregate`, whose denominator sum_t k_t*n_t keeps the loss scale fixed:
alpha moves weight between steps, it does not shrink or grow the loss."""

from __future__ import annotations


def step_weights(token_counts: list[int], alpha: float | None) -> list[float]:
    """k_t = n_t^-alpha for each trained step (alpha None or 0: every step weighs 1, a token mean;
    alpha 1: every step counts the same, a mean of per-step means)."""
    if any(n < 1 for n in token_counts):
        raise ValueError(f"token counts must be >= 1, got {token_counts}")
    if not alpha:
        return [1.0] * len(token_counts)
    return [float(n) ** -alpha for n in token_counts]


def effective_step_share(token_counts: list[int], alpha: float | None) -> list[float]:
    """The share of the total loss weight each step carries: k_t*n_t / sum_s k_s*n_s."""
    k = step_weights(token_counts, alpha)
    total = sum(ki * n for ki, n in zip(k, token_counts))
    return [ki * n / total for ki, n in zip(k, token_counts)]
