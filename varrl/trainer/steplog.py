"""What one training step logs: each rank's share (StepLog), the reduced metrics, and the reasons an
update could not move the policy (reported loudly, once per kind)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StepLog:
    """One rank's share of a step's metrics."""

    scores: np.ndarray  # final rewards of every scored image
    components: dict[str, np.ndarray]
    returns: np.ndarray  # what advantages came from (= scores, or soft values for prefixes)
    update: dict[str, float]
    rollout_s: float
    reward_s: float
    update_s: float


def step_metrics(parts: list[StepLog], stage: str, skipped: int, flat: int, lr: float) -> dict:
    """Grouped metric names: reward/*, policy/*, scale/<t>/*, stage/<stage>/*, perf/*; policy and
    perf figures are averaged over ranks (perf: the slowest rank's time)."""
    scores = np.concatenate([p.scores for p in parts])
    returns = np.concatenate([p.returns for p in parts])
    ok = np.isfinite(scores)
    m = {"reward/mean": float(scores[ok].mean()) if ok.any() else float("nan"),
         "reward/std": float(scores[ok].std()) if ok.any() else float("nan"),
         "reward/skipped_groups": skipped, "reward/flat_groups": flat, "policy/lr": lr}
    for k in parts[0].components:
        v = np.concatenate([p.components[k] for p in parts])
        if np.isfinite(v).any():
            m[f"reward/{k}"] = float(np.nanmean(v))
    for k in parts[0].update:
        m[k] = float(np.mean([p.update[k] for p in parts]))
    if stage != "full":
        m[f"stage/{stage}/reward_mean"] = m["reward/mean"]
        m[f"stage/{stage}/return_mean"] = float(np.nanmean(returns)) if np.isfinite(returns).any() else float("nan")
        for k in ("loss", "kl", "ratio_mean", "clipfrac"):
            m[f"stage/{stage}/{k}"] = m[f"policy/{k}"]
    rollout_s = max(p.rollout_s for p in parts)
    reward_s = max(p.reward_s for p in parts)
    update_s = max(p.update_s for p in parts)
    m.update({"perf/rollout_s": rollout_s, "perf/reward_s": reward_s, "perf/update_s": update_s,
              "perf/images_per_s": len(scores) / max(rollout_s + reward_s + update_s, 1e-9)})
    return m


def no_signal(m: dict, groups: int, skipped: int, trainable: str | None) -> list[tuple[str, str]]:
    """(kind, message) for each reason the step's update could not move the policy."""
    out = []
    if groups and skipped == groups:
        out.append(("all_nan", f"all {groups} groups got only NaN rewards (the reward applies to none of the "
                               "prompts): the update had nothing to train on"))
    fracs = [v for k, v in m.items() if k.startswith("scale/") and k.endswith("/mask_frac")]
    if not out and fracs and all(v == 0 for v in fracs):  # (no rows at all also leaves the masks empty)
        out.append(("empty_masks", "every MP mask of the trained grids is empty, so the policy term has no "
                                   "gradient (see rl.mp and the reward's boxes in samples/masks_step_*.png)"))
    if m.get("policy/grad_norm") == 0 and not out:
        why = ("train.trainable selects parameters the loss does not reach, or " if trainable else "")
        out.append(("zero_grad", "the update's gradient is exactly 0, most likely because " + why + "every "
                                 "group's rewards were equal (no advantage) while the KL term is still 0"))
    return out
