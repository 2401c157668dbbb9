"""How many rollouts does the policy gradient need to find the one direction known to help?

Sampling the shipped nano model at a lower temperature raises its held-out reward
(`benchmarks/eval_noise.py --temperatures 1.0,0.7`), so sharpening is a direction with a real
gain. Scaling grid t's logits by beta_t is that direction, one scalar per grid. From one image
the policy gradient estimates dE[R]/dbeta_t as A * S_t: A is the image's group-centred reward
and S_t = d log p(image) / d beta_t, the sum over the grid's tokens of (logit of the drawn token
- the logits' mean under the policy). On real GRPO batches (`train.prompts_per_step` x
`train.group_size`, the real OCR reward) the script prints, per grid and in total, that estimate
with its standard error and its per-image signal-to-noise ratio. It also measures the same slope
by a finite difference: the same prompts and noise seeds sampled at `--temperature`. A run that
samples at its own `sampler.temperature` T0 (no CFG) is measured around T0: its logits are
z / T0, beta = 1 is T0 itself, and the sharper arm defaults to 0.7 * T0. With truncation
(`sampler.top_k`, `sampler.top_p`) S is scored under the truncated distribution with each
token's set held fixed, as the update's log-probs are: a token alone in its set scores 0; the
finite difference also sees the sets shrink as the sampler sharpens. From the
two it prints how many images the score-function estimate needs before its sign is 2 standard
errors clear, beside the number of images the configured run samples. With a cold tail
(`sampler.tail_after`, `sampler.tail_temperature`) the direction is the grids up to the tail (the
sharper arm changes `sampler.temperature` only), and with `rl.last_grid` the grids the run trains:
the other grids' scores are left out.

If even this one scalar direction needs more images than a run draws, the full update (millions
of directions, each with its own noise) cannot be expected to find a held-out gain in that run.

    python benchmarks/sharpen_signal.py [--batches 8] [--temperature T] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from varrl.config import load_config
from varrl.eval.signal import centred_rewards, sharpen_scores, sharpen_token_scores
from varrl.policy.sampler import rescoring_logits
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.dist import DistInfo
from varrl.trainer.loop import Trainer


def normalised_estimates(tr: Trainer, batch, s_BL: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
    """Per image [B, 2]: the sharpening estimate with the run's own advantages (group-normalised as
    rl.adv_norm says), once with the image's advantage on every token and once with the per-token
    advantages the run's update uses (region credit; the same as the first without it)."""
    adv = tr.local_advantages(batch)
    rows = torch.nonzero(keep).flatten()
    image = adv.sample_B[rows] * s_BL[rows].sum(1)
    if adv.steps is None:
        return torch.stack([image, image], 1).numpy()
    offsets = tr.policy.schedule.offsets
    token = sum((a[rows] * s_BL[rows][:, offsets[t]: offsets[t + 1]]).sum(1) for a, t in zip(adv.steps, batch.steps))
    return torch.stack([image, token], 1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=8, help="batches of the configured size to draw")
    ap.add_argument("--temperature", type=float, default=None,
                    help="the sharper arm of the finite difference (beta = T0 / temperature, T0 = the run's "
                         "sampler.temperature; default 0.7 * T0)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(TrainRunConfig, None, ["rl.method=grpo", *args.overrides, "train.eval_prompts=1"],
                      apply_method_preset)
    if cfg.rl.vmr.enabled:
        ap.error("sharpen_signal.py measures full trajectories: drop the VMR overrides (it runs rl.method=grpo)")
    if cfg.sampler.cfg:
        ap.error("sharpen_signal.py needs a sampler without CFG (sampler.cfg=0): the score S is the "
                 "derivative at beta = 1 of the tempered logits z / T")
    P, base = cfg.train.prompts_per_step, cfg.sampler
    # The run's own sampling temperature T0 is beta = 1; the sharper arm draws at --temperature.
    T0 = base.temperature
    if args.temperature is None:
        args.temperature = round(0.7 * T0, 6)
    if not 0 < args.temperature < T0:
        ap.error(f"--temperature must be in (0, {T0}) to sharpen the run's sampler, got {args.temperature}")
    rows, diffs, norm, alone = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp), DistInfo(), resume=False)
        try:
            sch = tr.policy.schedule
            # The direction: the grids the run trains that sample at T0 (not a cold tail's grids).
            n_dir = sum(1 for k in range(tr.last) if base.temperature_at(k, sch) == T0)
            offsets = list(sch.offsets)[: n_dir + 1]
            tau_L = torch.tensor([base.temperature_at(k, sch) for k in range(tr.last)]).repeat_interleave(
                torch.tensor(sch.tokens_per_step[: tr.last]))
            for b in range(args.batches):
                records = [tr.train_prompts[b * P + i] for i in range(P)]
                means = []
                # Both arms draw the same prompts from the same noise seed: the difference is paired.
                for temp in (T0, args.temperature):
                    tr.cfg.sampler = replace(base, temperature=temp)
                    tr.gen.manual_seed(b)
                    batch = tr.rollout(b, records)
                    means.append(float(batch.returns.nanmean()))
                    if temp == T0:
                        idx = torch.cat(batch.traj.idx, 1)
                        with torch.no_grad():  # each grid's logits as drawn: tempered, then truncated
                            logits = rescoring_logits(tr.policy.teacher_logits(batch.traj) / tau_L[None, :, None],
                                                      base, idx)
                        alone.append(float((torch.isfinite(logits[:, : offsets[-1]]).sum(-1) == 1).float().mean()))
                        S = sharpen_scores(logits, idx, offsets)
                        A = centred_rewards(batch.returns.float(), batch.traj.group)
                        keep = torch.isfinite(A)
                        rows.append((A[keep, None] * S[keep]).numpy())
                        s_BL = sharpen_token_scores(logits, idx)
                        s_BL[:, offsets[-1]:] = 0.0  # tokens outside the direction have no score along it
                        norm.append(normalised_estimates(tr, batch, s_BL, keep))
                diffs.append(means[1] - means[0])
                print(f"batch {b + 1}/{args.batches}: mean reward {means[0]:.3f} at temperature {T0}, "
                      f"{means[1]:.3f} at {args.temperature}", flush=True)
        finally:
            tr.reward.close()
    G = np.concatenate(rows)
    n = len(G)
    run_images = cfg.train.steps * P * cfg.train.group_size
    print(f"\n{n} images per arm; the configured run samples {run_images} ({cfg.train.steps} steps x {P} x "
          f"{cfg.train.group_size})")
    if base.top_k or base.top_p:
        print(f"truncation (top-k {base.top_k}, top-p {base.top_p}): {np.mean(alone):.1%} of the direction's "
              "tokens are alone in their set (score 0)")
    print("score-function estimate (what the policy gradient sees), per image: A * S")
    print(" grid    h x w  dE[R]/dbeta    s.e.  per-image SNR")
    grids, all_T = tr.policy.schedule.grids[:n_dir], tr.policy.schedule.num_steps
    if n_dir < all_T:
        print(f"the direction is grids 1-{n_dir}: the later grids are "
              f"{'not trained (rl.last_grid)' if n_dir == tr.last else 'a cold tail (sampler.tail_after)'}")
    cols = [(f"{t + 1:>5}  {h:>3} x {w:<3}", G[:, t]) for t, (h, w) in enumerate(grids)]
    cols.append(("all grids      " if n_dir == all_T else f"grids 1-{n_dir:<6}", G.sum(1)))
    for name, g in cols:
        mean, sd = float(g.mean()), float(g.std(ddof=1))
        print(f"{name}  {mean:+11.4f}  {sd / np.sqrt(n):6.4f}  {mean / sd if sd > 0 else float('nan'):+13.4f}")
    d_beta = T0 / args.temperature - 1.0
    slope = float(np.mean(diffs)) / d_beta
    slope_se = float(np.std(diffs, ddof=1) / np.sqrt(len(diffs))) / d_beta if len(diffs) > 1 else float("nan")
    sd_all = float(G.sum(1).std(ddof=1))
    print(f"finite difference (temperature {T0} -> {args.temperature}, beta +{d_beta:.3f}, paired batches): "
          f"dE[R]/dbeta = {slope:+.4f} +- {slope_se:.4f} (s.e.)")
    if slope > 0:
        need = 4.0 * sd_all**2 / slope**2
        print(f"images before the score-function estimate of that slope is 2 s.e. clear of 0: {need:.0f} "
              f"(per-image std {sd_all:.2f} / slope {slope:.3f}), {need / run_images:.1f}x what the run samples")
    else:
        print("the finite difference found no gain from sharpening at this temperature: nothing to detect")
    N = np.concatenate(norm)
    print("\nwith the run's own normalised advantages (scale-free: sign-detection images = 4 / SNR^2 at the "
          "estimate's own mean)")
    for name, g in (("image advantage on every token", N[:, 0]),
                    ("the update's per-token advantages" + ("" if cfg.rl.region_credit.enabled else " (the same)"),
                     N[:, 1])):
        mean, sd = float(g.mean()), float(g.std(ddof=1))
        snr = mean / sd if sd > 0 else float("nan")
        need = 4.0 / snr**2 if snr > 0 else float("inf")
        print(f"  {name:<48} mean {mean:+.4f} +- {sd / np.sqrt(len(g)):.4f}  per-image SNR {snr:+.4f}  "
              f"images {need:.0f}")


if __name__ == "__main__":
    main()
