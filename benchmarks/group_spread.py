"""How much of GRPO's update comes from groups whose rewards differ only by the reward's jitter?

Group normalisation divides each group's centred rewards by the group's std, so every group that
is not exactly flat gets advantages of unit scale, whatever its spread. With the OCR reward many
single-word prompts are read right by all G samples and score 2.00, 1.99, 2.00, ...: their spread
is the recogniser's confidence in the third decimal, and normalising it gives the update
full-size advantages with no information in them. This script samples real GRPO batches of the
configured run (`train.prompts_per_step` x `train.group_size`, the real OCR reward, the run's
sampler) and prints the distribution of the groups' reward stds, and the share of the update's
advantage energy (sum of A^2) that groups below each floor carry with plain group normalisation
and with `rl.adv_std_floor` at that floor.

    python benchmarks/group_spread.py [--batches 16] [--floors 0.02,0.05,0.1,0.2] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from varrl.algorithms.grpo import group_advantages
from varrl.config import load_config
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.dist import DistInfo
from varrl.trainer.loop import Trainer


def sample_groups(cfg: TrainRunConfig, batches: int) -> np.ndarray:
    """[groups, G] rewards of `batches` rollouts of the run's first training prompts."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp), DistInfo(), resume=False)
        try:
            P = cfg.train.prompts_per_step
            for b in range(batches):
                tr.gen.manual_seed(b)
                batch = tr.rollout(0, [tr.train_prompts[b * P + i] for i in range(P)])
                rows.append(batch.returns.view(P, -1).double().numpy())
        finally:
            tr.reward.close()
    return np.concatenate(rows)


def energy_share(rewards_NG: np.ndarray, below_N: np.ndarray, floor: float) -> float:
    """Share of sum A^2 over the batch that the groups `below_N` carry, advantages normalised per
    group with `floor` (0: plain group std)."""
    N, G = rewards_NG.shape
    adv = group_advantages(torch.from_numpy(rewards_NG.reshape(-1)), torch.arange(N).repeat_interleave(G),
                           "group", std_floor=floor).view(N, G).numpy()
    e_N = (adv ** 2).sum(1)
    return float(e_N[below_N].sum() / max(e_N.sum(), 1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=16, help="batches of the configured size to draw")
    ap.add_argument("--floors", default="0.02,0.05,0.1,0.2", help="std floors to report, in reward units")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(TrainRunConfig, None, [*args.overrides, "train.eval_prompts=1"], apply_method_preset)
    r_NG = sample_groups(cfg, args.batches)
    sd_N = r_NG.std(1)
    flat = sd_N == 0
    print(f"{len(r_NG)} groups of {r_NG.shape[1]} ({args.batches} batches), sampler temperature "
          f"{cfg.sampler.temperature}, reward mean {r_NG.mean():.3f}, batch std {r_NG.std():.3f}")
    q = np.quantile(sd_N, [0.1, 0.25, 0.5, 0.75, 0.9])
    print("group reward std, quantiles 10/25/50/75/90%: " + " / ".join(f"{v:.3f}" for v in q))
    print(f"exactly flat groups (advantage 0 under any norm): {flat.mean():.2f}")
    top = max(float(f) for f in args.floors.split(","))
    above = sd_N[sd_N >= top]
    if len(above):
        print(f"groups at or above the largest floor ({top}): {len(above) / len(sd_N):.2f}, "
              f"stds {above.min():.3f} to {above.max():.3f}")
    print(f"{'floor':>6} {'groups below':>13} {'their share of sum A^2: group norm':>36} {'with the floor':>15}")
    for floor in (float(f) for f in args.floors.split(",")):
        below = (sd_N < floor) & ~flat
        print(f"{floor:>6.2f} {below.mean():>13.2f} {energy_share(r_NG, below, 0.0):>36.2f} "
              f"{energy_share(r_NG, below, floor):>15.2f}")


if __name__ == "__main__":
    main()
