"""One-pass teacher-forced re-scoring vs sampling the same trajectories.

    python benchmarks/rescore.py [--checkpoint DIR] [--group 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

import varrl


def best_of(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    policy = varrl.load_policy(args.checkpoint)
    prompt = ['the text "OPEN" in red on a white background']
    for mode, cfg in (("plain", 3.0), ("sampling", 0.0), ("sampling", 3.0)):
        s = varrl.SamplerConfig(cfg=cfg, logprob_mode=mode)
        def sample(s=s):
            return policy.rollout(prompt, n=args.group, sampler=s, generator=torch.Generator().manual_seed(0))

        traj = sample()
        t_sample = best_of(sample, args.repeats)
        with torch.no_grad():
            t_score = best_of(lambda t=traj: policy.logprobs(t), args.repeats)
            lp = policy.logprobs(traj)
        t_grad = best_of(lambda t=traj: sum(x.sum() for x in policy.logprobs(t)).backward(), args.repeats)
        diff = max((a - b).abs().max().item() for a, b in zip(lp, traj.logprobs))
        print(f"mode={mode:8s} cfg={cfg:3.1f}: sample {t_sample:.3f} s, re-score {t_score:.3f} s "
              f"({t_score / t_sample:.2f}x), re-score+backward {t_grad:.3f} s, max |dlogp| {diff:.1e}")


if __name__ == "__main__":
    main()
