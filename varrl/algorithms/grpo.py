"""GRPO as pure tensor functions: group advantages, the clipped token-level policy term, the k3 KL
estimator and the aggregation of token terms into one loss per sample.

Token terms are kept per step (a list over the trained steps of [B, n_t] tensors) because a VAR
step is a whole grid: how the steps are weighted against each other is a choice (`aggregate`)."""

from __future__ import annotations

from typing import Literal

import torch

AdvNorm = Literal["group", "batch", "none", "loo"]


def group_advantages(rewards_B: torch.Tensor, group_B: torch.Tensor, norm: AdvNorm = "group",
                     eps: float = 1e-4, clip: float | None = None, std_floor: float = 0.0) -> torch.Tensor:
    """A_i = (R_i - mean of its group) / scale, with scale = the group's std ("group"), the std of
    the whole batch ("batch", as Flow-GRPO) or 1 ("none"). Stds are population stds (ddof 0).
    With "group" or "batch" a std below `std_floor` counts as `std_floor`: a group whose samples
    differ only by the reward's jitter (an OCR confidence of 0.99 against 1.00) then keeps
    advantages of its own small size instead of being blown up to unit scale.
    "loo" (RLOO) is the leave-one-out baseline: A_i = R_i - mean of the OTHER valid rows of its
    group = n/(n-1) * (R_i - mean), n the group's valid rows; no division by a std.

    NaN rewards are "not applicable": those rows get advantage 0 and take no part in the means and
    stds. A group left with fewer than two valid rows gets 0 everywhere."""
    valid_B = ~torch.isnan(rewards_B)
    r_B = torch.where(valid_B, rewards_B, torch.zeros_like(rewards_B)).double()
    groups, inv = torch.unique(group_B, return_inverse=True)
    G = len(groups)
    count_G = torch.zeros(G, dtype=torch.float64).index_add_(0, inv, valid_B.double())
    mean_G = torch.zeros(G, dtype=torch.float64).index_add_(0, inv, r_B) / count_G.clamp(min=1)
    centred_B = torch.where(valid_B, r_B - mean_G[inv], torch.zeros_like(r_B))
    if norm == "group":
        var_G = torch.zeros(G, dtype=torch.float64).index_add_(0, inv, centred_B ** 2) / count_G.clamp(min=1)
        adv_B = centred_B / (var_G.sqrt().clamp(min=std_floor)[inv] + eps)
    elif norm == "batch":
        r_valid = r_B[valid_B]
        std = r_valid.std(unbiased=False) if len(r_valid) > 1 else torch.zeros((), dtype=torch.float64)
        adv_B = centred_B / (std.clamp(min=std_floor) + eps)
    elif norm == "none":
        adv_B = centred_B
    elif norm == "loo":
        n_B = count_G[inv]
        adv_B = centred_B * n_B / (n_B - 1).clamp(min=1)  # groups with n < 2 are zeroed below
    else:
        raise ValueError(f"advantage norm must be 'group', 'batch', 'none' or 'loo', got {norm!r}")
    # Zero where nothing is centred (flat groups: 0/0 with eps = 0) or a group has < 2 valid rows.
    adv_B = torch.where((count_G >= 2)[inv] & (centred_B != 0), adv_B, torch.zeros_like(adv_B))
    if clip is not None:
        adv_B = adv_B.clamp(-clip, clip)
    return adv_B.to(rewards_B.dtype)


def degenerate_groups(rewards_B: torch.Tensor, group_B: torch.Tensor) -> tuple[int, int]:
    """(groups whose rewards are all NaN, groups whose valid rewards are all equal): neither
    carries a learning signal; the trainer counts them."""
    all_nan = flat = 0
    for g in torch.unique(group_B):
        r = rewards_B[group_B == g]
        r = r[~torch.isnan(r)]
        if len(r) == 0:
            all_nan += 1
        elif bool((r == r[0]).all()):
            flat += 1
    return all_nan, flat


def clipped_policy_term(logp_Bl: torch.Tensor, logp_old_Bl: torch.Tensor, adv: torch.Tensor,
                        clip_low: float = 0.2, clip_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic clipped surrogate per token, as a loss (to minimise):
    -min(rho*A, clip(rho, 1-clip_low, 1+clip_high)*A), rho = exp(logp - logp_old).
    `adv`: one advantage per sample [B], or one per token [B, l] (per-scale or region credit).
    Returns (loss_Bl, clipped_Bl): clipped marks the tokens whose gradient the clip removed."""
    ratio_Bl = torch.exp(logp_Bl - logp_old_Bl)
    adv_Bl = (adv[:, None] if adv.dim() == 1 else adv).to(ratio_Bl.dtype)
    unclipped = ratio_Bl * adv_Bl
    clipped = ratio_Bl.clamp(1.0 - clip_low, 1.0 + clip_high) * adv_Bl
    loss_Bl = -torch.minimum(unclipped, clipped)
    return loss_Bl, (clipped < unclipped).detach()


def k3_kl(logp_Bl: torch.Tensor, logp_ref_Bl: torch.Tensor) -> torch.Tensor:
    """The k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = logp_ref - logp.
    Non-negative, zero when the two agree, unbiased for samples drawn from pi."""
    d = logp_ref_Bl - logp_Bl
    return torch.exp(d) - d - 1.0


def aggregate(terms: list[torch.Tensor], step_weights: list[float] | None = None,
              masks: list[torch.Tensor] | None = None) -> torch.Tensor:
    """One loss per sample from per-step token terms (each [B, n_t]):

        L_i = sum_t k_t * sum_j M_tj * l_tj  /  sum_t k_t * n_t

    With all k_t = 1 and no mask this is the plain mean over every token of the sample. The
    denominator counts all tokens (mask or not), so a mask removes terms without rescaling the
    rest, and the weights change the balance between steps, not the overall scale."""
    if step_weights is None:
        step_weights = [1.0] * len(terms)
    if len(step_weights) != len(terms) or (masks is not None and len(masks) != len(terms)):
        raise ValueError(f"aggregate: {len(terms)} steps but {len(step_weights)} weights"
                         + ("" if masks is None else f" and {len(masks)} masks"))
    total_B = terms[0].new_zeros(terms[0].shape[0])
    norm = 0.0
    for t, (term_Bn, k) in enumerate(zip(terms, step_weights)):
        if masks is not None:
            term_Bn = term_Bn * masks[t].to(term_Bn.dtype)
        total_B = total_B + k * term_Bn.sum(dim=1)
        norm += k * term_Bn.shape[1]
    return total_B / norm
