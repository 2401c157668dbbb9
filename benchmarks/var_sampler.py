"""Images/s of varrl's sampler on VAR-d16-shaped weights, and what re-scoring those images costs.

Random (seeded) weights of the published shapes: the transformer of `var_d<depth>` and the
published tokenizer (channel width 160). The sampler runs the published FID settings: CFG 1.5
ramped over the grids, top-k 900, top-p 0.96. fp32 on CPU; bf16 autocast on a GPU when there is one.
Re-scoring = `policy.logprobs` (one teacher-forced pass over all grids), in the plain mode the
paper trains on and in the sampling mode (CFG branch included), without and with the backward pass.

    python benchmarks/var_sampler.py                       # batch 8, depth 16 (slow on 2 CPU cores)
    python benchmarks/var_sampler.py --batch 2 --depth 4   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from functools import partial

import torch

from varrl.models.var import VAR, VQVAE, VaeConfig, var_preset
from varrl.policy.sampler import SamplerConfig
from varrl.policy.var_policy import VarPolicy


def timed(fn, device: torch.device, repeats: int, warmup: bool) -> tuple[float, object]:
    """Best wall-clock seconds of `repeats` calls, after one untimed warm-up call (first calls pay
    for allocations and kernel selection)."""
    if warmup:
        fn()
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def build(depth: int, device: torch.device, seed: int) -> VarPolicy:
    cfg = var_preset("var_d36" if depth == 36 else "var_d16")
    cfg.depth, cfg.width, cfg.heads, cfg.mlp_hidden = depth, 64 * depth, depth, 256 * depth
    torch.manual_seed(seed)
    model, vae = VAR(cfg), VQVAE(VaeConfig(patch_nums=cfg.patch_nums))
    return VarPolicy(model.to(device).eval(), vae.to(device).eval())


def bench_mode(policy: VarPolicy, labels: list[int], mode: str, amp, device: torch.device, args):
    """Rollout and re-scoring times for one log-prob mode; returns (rows, the sampled trajectory)."""
    s = SamplerConfig(cfg=1.5, top_k=900, top_p=0.96, logprob_mode=mode)
    gen = torch.Generator().manual_seed(args.seed)
    warm = not args.no_warmup
    with amp:
        t_roll, traj = timed(partial(policy.rollout, labels, n=1, sampler=s, generator=gen), device, args.repeats,
                             warm)
        with torch.no_grad():
            t_score, lp = timed(partial(policy.logprobs, traj), device, args.repeats, warm)
    drift = max((a - b).abs().max().item() for a, b in zip(lp, traj.logprobs))
    rows = [(f"rollout (tokens, {mode} log-probs)", t_roll),
            (f"re-score, {mode}, no grad (max |drift| {drift:.1e})", t_score)]
    if not args.no_backward:
        def fwd_bwd():
            with amp:
                total = sum(x.sum() for x in policy.logprobs(traj))
            total.backward()
            policy.model.zero_grad(set_to_none=True)

        t_bwd, _ = timed(fwd_bwd, device, args.repeats, warm)
        rows.append((f"re-score, {mode}, forward + backward", t_bwd))
    return rows, traj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="images per rollout (default 8)")
    ap.add_argument("--depth", type=int, default=16, help="transformer depth; width 64*depth (default 16: VAR-d16)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--no-decode", action="store_true", help="skip the tokenizer's decoder")
    ap.add_argument("--no-backward", action="store_true", help="skip the re-scoring passes with backward")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-warmup", action="store_true", help="time the first call of each kind too")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    policy = build(args.depth, device, args.seed)
    n_params = sum(p.numel() for p in policy.model.parameters()) / 1e6
    print(f"device {device} ({dtype}), {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"VAR depth {args.depth} ({n_params:.0f}M parameters), {policy.schedule.total_tokens} tokens, "
          f"{policy.schedule.image_size} px; batch {args.batch}")
    labels = [(207 + 37 * i) % 1000 for i in range(args.batch)]
    rows, traj = [], None
    for mode in ("plain", "sampling"):
        mode_rows, traj = bench_mode(policy, labels, mode, amp, device, args)
        rows += mode_rows
    if not args.no_decode:
        with amp:
            t_dec, _ = timed(partial(policy.decode, traj), device, args.repeats, not args.no_warmup)
        rows.append(("decode (tokenizer decoder)", t_dec))
    width = max(len(name) for name, _ in rows)
    for name, sec in rows:
        print(f"  {name:<{width}}  {sec:8.2f} s  {args.batch / sec:8.2f} images/s")
    print(f"  (sampling cost of the {args.batch} images = rollout + decode; "
          "re-scoring is what each policy update adds per batch)")


if __name__ == "__main__":
    main()
