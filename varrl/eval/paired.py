"""Paired change of a held-out evaluation: the same prompts, sampled with the same noise seeds,
before and after training. Pairing by prompt takes the prompts' own spread (most of one
evaluation's standard error) out of the difference, and averaging over noise seeds takes out
most of the sampling luck, so a small change can be read against its own error."""

from __future__ import annotations

import numpy as np


def paired_change(start_SP: np.ndarray, end_SP: np.ndarray, weight_P: np.ndarray | None = None
                  ) -> tuple[float, float, int]:
    """Change from `start` to `end`, each [S noise seeds, P prompts] (NaN: no value), returned as
    (change, standard error over prompts, prompts used).

    Per prompt, d_P is the mean over its noise seeds of end - start (seeds where either side is
    NaN are left out; a prompt with none is dropped). Without weights the change is the mean of
    d_P and its error std(d_P) / sqrt(P). With weights (e.g. a prompt's target words, when the
    values are words read right) it is the pooled ratio sum d_P / sum w_P, with the ratio
    estimator's error sqrt(sum (d_P - change w_P)^2 / (P (P - 1))) * P / sum w_P."""
    start_SP, end_SP = np.asarray(start_SP, np.float64), np.asarray(end_SP, np.float64)
    if start_SP.shape != end_SP.shape or start_SP.ndim != 2:
        raise ValueError(f"paired_change needs two [seeds, prompts] arrays of one shape, got "
                         f"{start_SP.shape} and {end_SP.shape}")
    diff_SP = end_SP - start_SP
    valid_SP = np.isfinite(diff_SP)
    n_P = valid_SP.sum(0)
    keep_P = n_P > 0
    d_P = np.where(valid_SP, diff_SP, 0.0).sum(0)[keep_P] / n_P[keep_P]
    w_P = np.ones_like(d_P) if weight_P is None else np.asarray(weight_P, np.float64)[keep_P]
    P = d_P.size
    if P < 2 or w_P.sum() <= 0:
        raise ValueError(f"paired_change needs at least 2 prompts with values on both sides, got {P}")
    change = float(d_P.sum() / w_P.sum())
    se = float(np.sqrt(((d_P - change * w_P) ** 2).sum() / (P * (P - 1))) * P / w_P.sum())
    return change, se, P
