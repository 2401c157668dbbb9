"""Cost of one VMR prefix update relative to one vanilla GRPO update, next to the ideal.

Both updates use the same prompts and group size on the shipped nano model. A prefix update
samples G prefixes (grids 1..m), K completions of each forked from the prefix's KV cache, and
trains grids 1..m only. The ideal ratio is 1 + K x (the suffix's share of a full rollout's
compute), measured here as the suffix share of sampling time. The reward is the cheap
`brightness` one, so only policy compute is compared.

    python benchmarks/vmr_cost.py [--repeats 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from rescore import best_of  # benchmarks/ is on sys.path when run as a script

from varrl.config import load_config
from varrl.trainer.batches import full_batch, prefix_batch
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.dist import DistInfo
from varrl.trainer.loop import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(TrainRunConfig, None, ["reward.weights={brightness: 1.0}", *args.overrides], apply_method_preset)
    tc, vmr = cfg.train, cfg.rl.vmr
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp), DistInfo(), resume=False)
        P, G, K, m = tc.prompts_per_step, tc.group_size, vmr.k, tr.m
        records = [tr.train_prompts[i] for i in range(P)]
        prompts = [r.prompt for r in records]
        common = (cfg.sampler, tr.gen, tr.reward, tc.micro_batch)

        def vanilla():
            batch = full_batch(tr.policy, records, G, *common)
            tr.update(batch, tr.local_advantages(batch))

        def prefix():
            batch = prefix_batch(tr.policy, records, G, K, m, vmr.eta, *common)
            tr.update(batch, tr.local_advantages(batch))

        vanilla()  # warm-up
        t_vanilla, t_prefix = best_of(vanilla, args.repeats), best_of(prefix, args.repeats)
        t_full = best_of(lambda: tr.policy.rollout(prompts, n=G, sampler=cfg.sampler, generator=tr.gen), args.repeats)
        t_head = best_of(lambda: tr.policy.rollout(prompts, n=G, sampler=cfg.sampler, generator=tr.gen, steps=m),
                         args.repeats)
        tr.reward.close()
    suffix_share = max(0.0, 1.0 - t_head / t_full)
    T = tr.policy.schedule.num_steps
    print(f"{P} prompts x G={G}, K={K}, m={m} of {T} grids; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"vanilla update (rollout + update): {t_vanilla:.2f} s")
    print(f"VMR prefix update:                 {t_prefix:.2f} s  -> {t_prefix / t_vanilla:.2f}x vanilla")
    print(f"suffix share of a rollout's sampling time: {suffix_share:.2f} -> ideal 1 + K x share = "
          f"{1 + K * suffix_share:.2f}x")


if __name__ == "__main__":
    main()
