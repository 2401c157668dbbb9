"""Where an RL step's time goes, for the default `varrl train` config (or any config + overrides).

Prints seconds per step split into rollout / reward wait / update, the share of the reward's
work that the overlap with sampling hid, and the update's FLOP rate as a fraction of this
machine's fp32 matmul rate, measured in the same process with the same threads.

    python benchmarks/rl_step.py [--config F] [--steps 3] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from varrl.config import load_config
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.dist import DistInfo
from varrl.trainer.loop import Trainer


def matmul_rate(device: torch.device, n: int = 1024, repeats: int = 10) -> float:
    """fp32 matmul FLOP/s on `device` (a GPU's queue is drained before each clock read)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg: TrainRunConfig = load_config(TrainRunConfig, args.config, args.overrides, apply_method_preset)
    tc = cfg.train
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), DistInfo(), resume=False)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {tc.prompts_per_step} prompts x "
              f"{tc.group_size} samples = {tc.prompts_per_step * tc.group_size} images per step; "
              f"reward {list(cfg.reward.weights)}")
        trainer.step(0)  # warm-up: OCR workers start, kernels are chosen
        rows = [trainer.step(s) for s in range(1, args.steps + 1)]
        rollout_s, wait_s, update_s = (float(np.mean([r[k] for r in rows]))
                                       for k in ("perf/rollout_s", "perf/reward_s", "perf/update_s"))
        # The reward's own cost: score one batch's images with nothing else running.
        records = [trainer.train_prompts[i] for i in range(tc.prompts_per_step)]
        batch = trainer.rollout(0, records)
        prompts = [p for r in records for p in [r.prompt] * (len(batch.images) // len(records))]
        meta = [r.reward_meta() for r in records for _ in range(len(batch.images) // len(records))]
        t0 = time.perf_counter()
        trainer.reward.submit(batch.images, prompts, meta).result()
        reward_alone_s = time.perf_counter() - t0
        # FLOPs of one update on that batch (counted, not timed: the counter slows the pass down).
        adv = trainer.local_advantages(batch)
        with FlopCounterMode(display=False) as fc:
            trainer.update(batch, adv)
        flops = fc.get_total_flops()
        trainer.reward.close()
        device = trainer.policy.device
    peak = matmul_rate(device)
    step_s = rollout_s + wait_s + update_s
    hidden = max(0.0, 1.0 - wait_s / reward_alone_s) if reward_alone_s > 0 else 1.0
    achieved = flops / update_s
    print(f"seconds per step (mean of {args.steps}): {step_s:.2f}")
    print(f"  rollout (sample + decode)  {rollout_s:7.2f} s")
    print(f"  reward wait after sampling {wait_s:7.2f} s")
    print(f"  update                     {update_s:7.2f} s")
    print(f"reward alone on one batch: {reward_alone_s:.2f} s; share hidden by the overlap: {hidden:.0%}")
    print(f"update: {flops / 1e9:.1f} GFLOP in {update_s:.2f} s = {achieved / 1e9:.1f} GFLOP/s; "
          f"torch fp32 matmul on {device}: {peak / 1e9:.1f} GFLOP/s -> {achieved / peak:.0%} of it")
    # Re-scoring equals sampling up to float rounding: the update's first pass against the sampler's log-probs.
    print(f"re-scoring vs sampling: max |d log p| {max(r['policy/logprob_drift'] for r in rows):.2e}")


if __name__ == "__main__":
    main()
