"""One policy update on a batch of scored trajectories: the clipped GRPO objective with a KL term,
accumulated over micro-batches, gradients averaged over ranks, clipped, one optimizer step per epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from varrl.algorithms.grpo import aggregate, clipped_policy_term, k3_kl
from varrl.policy.sampler import NonFiniteError
from varrl.policy.trajectory import Trajectory
from varrl.trainer.config import RlConfig, TrainConfig
from varrl.trainer.dist import DistInfo, average_gradients_, broadcast_flag, gather_objects
from varrl.trainer.fsdp import full_value, local


class NonFiniteLossError(NonFiniteError):
    pass


@dataclass
class UpdatePlan:
    """Which steps this update trains, and how their token terms are weighted and masked.

    Plain GRPO trains every step with weight 1 and no mask; the paper's method (VMR stages,
    PANW, MP) only changes this plan, never the update itself."""

    steps: list[int]  # 0-based steps whose tokens carry loss
    weights: list[float] | None = None  # per trained step (None: all 1)
    masks: list[torch.Tensor] | None = None  # per trained step (same order), [B, n_t] in {0, 1}; None: all on
    mask_kl: bool = False
    kl_beta: float | None = None  # this update's KL coefficient (None: rl.kl_beta)
    advantages: list[torch.Tensor] | None = None
    """per trained step (same order), [B, n_t] token advantages that replace the per-sample adv_B
    (per-scale VMR, region credit); None: every token of a sample takes adv_B"""


def policy_update(policy, ref_policy, traj: Trajectory, adv_B: torch.Tensor, plan: UpdatePlan,
                  rl: RlConfig, train: TrainConfig, optimizer: torch.optim.Optimizer, info: DistInfo,
                  spare: Trajectory | None = None) -> dict:
    """Returns `policy/*` metrics averaged over epochs and tokens, and `scale/<t>/*` per trained grid.
    `spare`: one row of the rollout batch, for the zero-loss passes a sharded model may need."""
    B = traj.batch_size
    params = [p for p in policy.parameters() if p.requires_grad]
    chunks = [list(range(i, min(B, i + train.micro_batch))) for i in range(0, B, train.micro_batch)]
    extra = _passes_to_match(info, policy, len(chunks))
    old, ref = [None] * len(chunks), [None] * len(chunks)
    per_step = {t: dict.fromkeys(("ratio", "clip", "kl", "tokens", "mask"), 0.0) for t in plan.steps}
    sums = {"loss": 0.0, "first_dev": 0.0, "entropy": 0.0, "drift": 0.0}
    grad_norm = 0.0
    beta = rl.kl_beta if plan.kl_beta is None else plan.kl_beta
    for epoch in range(train.epochs):
        optimizer.zero_grad(set_to_none=True)
        for c, rows in enumerate(chunks):
            sub = traj.select(rows)
            lp = policy.logprobs(sub, plan.steps)
            if epoch == 0:
                # The first pass runs the rollout's own weights: its values are the old log-probs,
                # so the ratio is exactly 1 at the first update (on-policy, no extra forward pass).
                old[c] = [x.detach() for x in lp]
                if beta > 0:
                    with torch.no_grad():
                        ref[c] = ref_policy.logprobs(sub, plan.steps)
            terms, first_dev = _token_terms(lp, old[c], ref[c], adv_B[rows].to(lp[0].device), plan, rows, rl,
                                            beta, per_step)
            loss_b = aggregate(terms, plan.weights, None)
            (loss_b.sum() / B).backward()
            sums["loss"] += loss_b.detach().sum().item() / B
            if epoch == 0:
                sums["first_dev"] = max(sums["first_dev"], first_dev)
                sums["entropy"] += -sum(o.sum().item() for o in old[c])
                stored = [sub.logprobs[t].to(o.device) for t, o in zip(plan.steps, old[c])]
                sums["drift"] = max(sums["drift"], max((o - s).abs().max().item() for o, s in zip(old[c], stored)))
        for _ in range(extra):
            _zero_pass(policy, ref_policy if epoch == 0 and beta > 0 else None,
                       traj.select([0]) if spare is None else spare, plan.steps)
        # (FSDP: each rank checks its own shard; the flag is reduced over ranks.)
        bad = not all(torch.isfinite(local(p.grad)).all() for p in params if p.grad is not None)
        if broadcast_flag(info, bad or not math.isfinite(sums["loss"])):
            raise NonFiniteLossError("the loss or its gradient is not finite; the update was not applied")
        average_gradients_(info, params)
        # The norm is logged with clipping off too (an infinite threshold measures without clipping).
        grad_norm = full_value(torch.nn.utils.clip_grad_norm_(
            params, train.grad_clip if train.grad_clip > 0 else math.inf)).item()
        optimizer.step()
        if broadcast_flag(info, not all(torch.isfinite(local(p)).all() for p in params)):
            raise NonFiniteLossError("the update made the weights non-finite")
    return _metrics(per_step, sums, old, plan, train.epochs, grad_norm)


def _passes_to_match(info: DistInfo, policy, passes: int) -> int:
    """Passes this rank must add so that every rank runs as many as the busiest one (ranks differ
    when rows without a return were dropped): the calls of an FSDP-sharded model are collectives,
    and without FSDP a rank with no rows would otherwise have no gradients to all-reduce."""
    if info.world == 1:
        return 0
    return max(gather_objects(info, passes)) - passes


def _zero_pass(policy, ref_policy, row: Trajectory, steps: list[int]) -> None:
    """The calls (and so the collectives) of one micro-batch pass, with a zero loss."""
    lp = policy.logprobs(row, steps)
    if ref_policy is not None:
        with torch.no_grad():
            ref_policy.logprobs(row, steps)
    (sum(x.sum() for x in lp) * 0).backward()


def _metrics(per_step: dict, sums: dict, old: list, plan: UpdatePlan, epochs: int, grad_norm: float) -> dict:
    tot = {k: sum(s[k] for s in per_step.values()) for k in ("ratio", "clip", "kl", "tokens")}
    n_tok = max(tot["tokens"], 1.0)
    first_tokens = sum(sum(o.numel() for o in ol) for ol in old)
    m = {"policy/loss": sums["loss"] / epochs, "policy/ratio_mean": tot["ratio"] / n_tok,
         "policy/clipfrac": tot["clip"] / n_tok, "policy/kl": tot["kl"] / n_tok,
         "policy/entropy": sums["entropy"] / max(first_tokens, 1), "policy/grad_norm": grad_norm,
         "policy/ratio_dev_first": sums["first_dev"], "policy/logprob_drift": sums["drift"]}
    weights = plan.weights or [1.0] * len(plan.steps)
    for (t, s), k in zip(per_step.items(), weights):
        n = max(s["tokens"], 1.0)
        m.update({f"scale/{t + 1}/ratio_mean": s["ratio"] / n, f"scale/{t + 1}/clipfrac": s["clip"] / n,
                  f"scale/{t + 1}/kl": s["kl"] / n, f"scale/{t + 1}/mask_frac": s["mask"] / n,
                  f"scale/{t + 1}/weight": k})
    return m


def _token_terms(lp, old, ref, adv_b, plan: UpdatePlan, rows, rl: RlConfig, beta: float, per_step: dict):
    """Per trained step: the masked policy term plus beta * KL (masked only with mask_kl).
    Accumulates per-step statistics into per_step; returns the terms and max |ratio - 1|."""
    terms, max_dev = [], 0.0
    for i, (t, lp_t, old_t) in enumerate(zip(plan.steps, lp, old)):
        st = per_step[t]
        adv = adv_b if plan.advantages is None else plan.advantages[i][rows].to(lp_t.device)
        pg_Bl, clipped_Bl = clipped_policy_term(lp_t, old_t, adv, rl.clip_low, rl.clip_high)
        mask = None if plan.masks is None else plan.masks[i][rows].to(lp_t.device, lp_t.dtype)
        term = pg_Bl if mask is None else pg_Bl * mask
        if ref is not None:
            kl_Bl = k3_kl(lp_t, ref[i])
            term = term + beta * (kl_Bl * mask if (mask is not None and plan.mask_kl) else kl_Bl)
            st["kl"] += kl_Bl.detach().sum().item()
        terms.append(term)
        ratio = torch.exp(lp_t.detach() - old_t)
        st["ratio"] += ratio.sum().item()
        st["clip"] += clipped_Bl.float().sum().item()
        st["tokens"] += ratio.numel()
        st["mask"] += ratio.numel() if mask is None else mask.sum().item()
        max_dev = max(max_dev, (ratio - 1).abs().max().item())
    return terms, max_dev
