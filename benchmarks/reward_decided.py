"""Which grids decide the reward? Where the policy gradient's signal can live.

For a split m, sample G prefixes (grids 1..m) per prompt and K completions of each (continuing
the prefix's KV cache, as VMR does), score every completion with the run's reward, and split each
prompt's reward variance into the part that differs between prefixes (decided by grids 1..m) and
the part that differs between completions of one prefix (decided by grids m+1..T). The share
decided by grids 1..m rises from 0 (m = 0) to 1 (m = T). Where it is already high at a coarse grid,
the reward differences a GRPO group sees were fixed by few tokens, and the score-function terms of
the fine grids add noise without signal; where it stays low until the last grids, the fine grids
carry the signal too.

    python benchmarks/reward_decided.py [--prompts 32] [--prefixes 4] [--completions 4]
                                        [--splits 2,4,6,8] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from varrl.config import load_config
from varrl.errors import ConfigError
from varrl.eval.signal import decided_share
from varrl.trainer.batches import prefix_batch
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.dist import DistInfo
from varrl.trainer.loop import Trainer, resolve_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32, help="training prompts (the run's own, in order)")
    ap.add_argument("--prefixes", type=int, default=4, help="prefixes per prompt (G >= 2)")
    ap.add_argument("--completions", type=int, default=4, help="completions per prefix (K >= 2)")
    ap.add_argument("--splits", default="2,4,6,8",
                    help="prefix lengths, each given like rl.vmr.m (a grid count, 32px or 8x8)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples of the prompts for the s.e.")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.prefixes < 2 or args.completions < 2 or args.prompts < 2:
        ap.error("--prompts, --prefixes and --completions must each be >= 2 to split a variance")
    cfg = load_config(TrainRunConfig, None, [*args.overrides, "train.eval_prompts=1"], apply_method_preset)
    P, G, K = args.prompts, args.prefixes, args.completions
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp), DistInfo(), resume=False)
        try:
            T = tr.policy.schedule.num_steps
            try:
                splits = [resolve_split(s.strip(), tr.policy.schedule, "--splits") for s in args.splits.split(",")]
            except ConfigError as e:
                ap.error(str(e))
            if len(tr.train_prompts) < P:
                ap.error(f"--prompts {P}: the run has only {len(tr.train_prompts)} training prompts")
            records = [tr.train_prompts[i] for i in range(P)]
            print(f"{P} prompts x {G} prefixes x {K} completions = {P * G * K} images per split; sampler "
                  f"temperature {cfg.sampler.temperature}, cfg {cfg.sampler.cfg}", flush=True)
            print(" split  grid    tokens  between  within  share decided by grids 1..m (s.e.)  seconds")
            offsets = tr.policy.schedule.offsets
            for m in splits:
                t0 = time.perf_counter()
                tr.gen.manual_seed(m)
                batch = prefix_batch(tr.policy, records, G, K, m, 1.0, cfg.sampler, tr.gen, tr.reward,
                                     cfg.train.micro_batch)
                r_PGK = torch.from_numpy(batch.reward.scores).view(P, G, K)
                between, within = decided_share(r_PGK)
                rng = np.random.default_rng(m)
                boot = []
                for _ in range(args.bootstrap):
                    b, w = decided_share(r_PGK[torch.from_numpy(rng.integers(0, P, P))])
                    boot.append(b / (b + w) if b + w > 0 else np.nan)
                h, w_ = tr.policy.schedule.grids[m - 1]
                print(f"{m:>3}/{T}  {h:>2}x{w_:<3}  {offsets[m]:>5}  {between:+7.4f}  {within:6.4f}  "
                      f"{between / (between + within):+.3f} ({np.nanstd(boot):.3f}){'':>16}"
                      f"{time.perf_counter() - t0:5.0f}", flush=True)
        finally:
            tr.reward.close()


if __name__ == "__main__":
    main()
