"""Sampling speed of a policy: images/s for one group of 16, with and without CFG.

    python benchmarks/sampler.py [--checkpoint DIR] [--group 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

import varrl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default=None, help="model directory (default: shipped nano)")
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    policy = varrl.load_policy(args.checkpoint)
    prompt = ['the text "OPEN" in red on a white background']
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, group {args.group}")
    for cfg in (0.0, 3.0):
        sampler = varrl.SamplerConfig(cfg=cfg)
        policy.rollout(prompt, n=2, sampler=sampler, generator=torch.Generator().manual_seed(0))  # warm-up
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            traj = policy.rollout(prompt, n=args.group, sampler=sampler, generator=torch.Generator().manual_seed(r))
            t_tok = time.perf_counter() - t0
            policy.decode(traj)
            times.append((t_tok, time.perf_counter() - t0))
        best_tok = min(t for t, _ in times)
        best_all = min(t for _, t in times)
        print(f"cfg={cfg:3.1f}: tokens {args.group / best_tok:6.1f} img/s, "
              f"tokens+decode {args.group / best_all:6.1f} img/s (best of {args.repeats}, {best_all:.2f} s per group)")


if __name__ == "__main__":
    main()
