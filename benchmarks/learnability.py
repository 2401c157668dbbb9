"""Can the update learn at all? Train on ONE fixed training prompt, and compare against a control
whose advantages are random (zero-mean within each group, independent of the rewards).

Both runs start from the same weights with the same sampling noise and take the same number of
updates of `train.group_size` samples of that prompt. The control moves the weights as much as the
real update does but carries no reward signal, so:
  - real above control: the gradient carries signal; the gap is what the signal is worth;
  - real falling like the control: the walk of the weights under sampling noise is what drives
    the reward, and it costs more than the signal gains (lower train.lr, fewer trainable
    parameters with train.trainable, or more samples per update).
On one prompt there is no generalisation to ask for: if the real run cannot raise this prompt's
own reward, a held-out gain is out of reach.

    python benchmarks/learnability.py [--steps 40] [--prompt 0] [key=value ...]
    python benchmarks/learnability.py train.trainable='bias$' train.lr=1e-3
    python benchmarks/learnability.py train.lora.rank=8 train.lr=1e-3
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


def train_one_prompt(cfg: TrainRunConfig, which: int, steps: int, control: bool) -> tuple[str, list[dict]]:
    """`steps` updates on the `which`-th two-word training prompt; per step its mean reward, word
    accuracy and the KL to the start."""
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp), DistInfo(), resume=False)
        two_word = (tr.train_prompts[i] for i in range(10_000) if len(tr.train_prompts[i].words) == 2)
        record = next(r for k, r in enumerate(two_word) if k == which)
        noise = torch.Generator().manual_seed(12345)
        rows = []
        try:
            for step in range(steps):
                tr.set_lr(step)
                batch = tr.rollout(step, [record] * cfg.train.prompts_per_step)
                if control:
                    fake = torch.randn(batch.returns.shape, generator=noise, dtype=batch.returns.dtype)
                    fake[torch.isnan(batch.returns)] = float("nan")
                    adv = group_advantages(fake, batch.traj.group, cfg.rl.adv_norm, clip=cfg.rl.adv_clip,
                                           std_floor=cfg.rl.adv_std_floor).float()
                else:
                    adv = tr.local_advantages(batch)
                upd = tr.update(batch, adv)
                acc = next((v for k, v in batch.reward.components.items() if k.endswith("word_acc")), None)
                rows.append({"reward": float(np.nanmean(batch.reward.scores)), "kl": upd["policy/kl"],
                             "word_acc": float(np.nanmean(acc)) if acc is not None else float("nan")})
        finally:
            tr.reward.close()
    return record.prompt, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--prompt", type=int, default=0, help="which two-word training prompt (0: the first)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    # One prompt per update, plain GRPO unless the overrides say otherwise; no evaluation.
    cfg = load_config(TrainRunConfig, None, ["rl.method=grpo", "train.prompts_per_step=1", "train.eval_prompts=1",
                                            *args.overrides], apply_method_preset)
    q = max(1, args.steps // 4)
    lora = cfg.train.lora
    train = (f"LoRA rank {lora.rank} scale {lora.scale:g} on {lora.targets or 'the default layers'}" if lora.enabled
             else f"trainable {cfg.train.trainable or 'all'}")
    print(f"method {cfg.rl.method}, lr {cfg.train.lr}, {train}, "
          f"{cfg.train.prompts_per_step} x {cfg.train.group_size} samples per update, {args.steps} updates")
    for control in (False, True):
        prompt, rows = train_one_prompt(cfg, args.prompt, args.steps, control)
        if not control:
            print(f"prompt: {prompt}")
        r, a = np.array([x["reward"] for x in rows]), np.array([x["word_acc"] for x in rows])
        print(f"{'random advantages' if control else 'real advantages  '}: reward {r[:q].mean():.3f} -> "
              f"{r[-q:].mean():.3f} (first -> last {q} updates), word accuracy {a[:q].mean():.3f} -> "
              f"{a[-q:].mean():.3f}, KL to the start {rows[-1]['kl']:.4f} per token", flush=True)


if __name__ == "__main__":
    main()
