"""How much of one update's gradient is signal? Cosines between the policy gradients of
independent batches, on the shipped nano model with the real OCR reward.

For each stage of the config (plain GRPO: the full trajectory; var_rl: the VMR prefix and the
suffix), it draws batches of `train.prompts_per_step` x `train.group_size` rollouts and takes the
gradient of the real update (`policy_update`: PANW weights, MP masks; KL off, learning rate 0,
so the weights never move). Two batches of the SAME prompts with fresh noise share only the
signal: their cosine estimates the signal's share of a gradient's squared norm, and 1/cosine is
about how many batches must be averaged before the signal outweighs the noise. Two batches of
DIFFERENT prompts share only what carries over between prompts, which is what held-out prompts
can gain from.

    python benchmarks/grad_snr.py [--pairs 3] [key=value ...]      # e.g. rl.method=grpo
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from varrl.algorithms.stages import stage_at
from varrl.config import load_config
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.dist import DistInfo
from varrl.trainer.loop import Trainer


def gradient(tr: Trainer, step: int, prompts_at: int, seed: int) -> torch.Tensor:
    """The update's gradient for the batch the stage of `step` samples from the prompts at
    position `prompts_at`, with noise seed `seed`."""
    cfg = tr.cfg
    P = cfg.train.prompts_per_step
    records = [tr.train_prompts[prompts_at * P + i] for i in range(P)]
    tr.gen.manual_seed(seed)
    batch = tr.rollout(step, records)
    params = [p for p in tr.policy.parameters() if p.requires_grad]
    frozen = torch.optim.SGD(params, lr=0.0)  # the real update path, without moving the weights
    tr.update(batch, tr.local_advantages(batch), frozen)
    return torch.cat([p.grad.flatten() for p in params if p.grad is not None])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="prompt sets per stage (each sampled twice)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(TrainRunConfig, None, [*args.overrides, "rl.kl_beta=0", "train.eval_prompts=1"],
                      apply_method_preset)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp), DistInfo(), resume=False)
        stages = {"full": 0}  # the first step of each stage the schedule runs
        if cfg.rl.per_scale:
            stages = {"per_scale": 0}  # every update trains every grid
        elif cfg.rl.vmr.enabled:
            stages = {}
            for step in range(cfg.train.steps):
                stages.setdefault(stage_at(step, cfg.rl.alternation, cfg.train.steps), step)
        print(f"method {cfg.rl.method}, sampler cfg {cfg.sampler.cfg}, batch {cfg.train.prompts_per_step} prompts "
              f"x {cfg.train.group_size}, {args.pairs} prompt sets per stage")
        try:
            for stage, step in stages.items():
                g = [[gradient(tr, step, p, 1000 * p + r) for r in range(2)] for p in range(args.pairs)]
                same = [cosine(a, b) for a, b in g]
                other = [cosine(g[p][r], g[q][r]) for p in range(args.pairs) for q in range(p + 1, args.pairs)
                         for r in range(2)]
                s_mean, o_mean, o_std = float(np.mean(same)), float(np.mean(other)), float(np.std(other))
                # Gradients are far from isotropic, so unrelated batches already scatter by o_std:
                # a same-prompt cosine inside that band is no evidence of signal.
                verdict = (f"about {1 / s_mean:.0f} batches to average before signal > noise"
                           if s_mean > o_mean + 2 * o_std / np.sqrt(len(same)) else
                           "no signal above the scatter of unrelated batches at this sample size")
                print(f"{stage:>6}: cos(same prompts, new noise) {s_mean:+.3f} (each: "
                      f"{', '.join(f'{c:+.3f}' for c in same)}); cos(other prompts) {o_mean:+.3f} "
                      f"(+- {o_std:.3f}); {verdict}", flush=True)
        finally:
            tr.reward.close()


if __name__ == "__main__":
    main()
