"""Cost of the sampler's truncation on one RL batch's logits (the shipped nano model's shape:
32 images x 763 tokens x 1024 codes), top-k and top-p together against the general path that
sorts the whole vocabulary (what `truncate_logits` falls back to when the k-th value is tied).
Sampling truncates once per token and the update's log-probs once per pass (old policy, policy,
reference), so this runs about 4 times per RL step.

    python benchmarks/truncation.py [--top-k 2] [--top-p 0.9] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from varrl.policy.sampler import truncate_logits


def seconds(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--shape", default="32,763,1024", help="B,L,V")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    B, L, V = (int(x) for x in args.shape.split(","))
    logits = torch.randn(B, L, V, generator=torch.Generator().manual_seed(0)) * 2
    k, p = args.top_k, args.top_p
    both = seconds(lambda: truncate_logits(logits, k, p), args.repeats)
    general = seconds(lambda: truncate_logits(truncate_logits(logits, k, 0.0), 0, p), args.repeats)
    only_k = seconds(lambda: truncate_logits(logits, k, 0.0), args.repeats)
    softmax = seconds(lambda: logits.log_softmax(-1), args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; logits [{B}, {L}, {V}]")
    print(f"top-k {k} + top-p {p}: {both:.3f} s (general path, full sort: {general:.3f} s, {general / both:.1f}x)")
    print(f"top-k {k} alone: {only_k:.3f} s; for scale, one log_softmax: {softmax:.3f} s")


if __name__ == "__main__":
    main()
