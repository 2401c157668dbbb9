"""How big must a change of the held-out evaluation be to mean something?

Runs `varrl train`'s own held-out evaluation (same prompts, same reward, same sampler) of one model
several times with different sampling noise, and prints each evaluation's mean reward with its
standard error and the spread over the noise seeds. A trained model's evaluation draws fresh
tokens wherever its logits moved, so a difference between two evaluations smaller than this
spread is not evidence of learning. With `--temperatures` it also shows how much the reward moves
when the same model samples more greedily: roughly what sharpening alone could buy.

    python benchmarks/eval_noise.py [--noise-seeds 0,1,2] [--temperatures 1.0,0.7] [key=value ...]
    python benchmarks/eval_noise.py policy.path=runs/nano_text/last train.eval_prompts=128
"""

from __future__ import annotations

import argparse

import numpy as np

from varrl.config import load_config
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.reeval import evaluate_at_seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noise-seeds", default="0,1,2", help="evaluation seeds (seed 0 is what a run's step 0 uses)")
    ap.add_argument("--temperatures", default="1.0", help="sampler temperatures to evaluate at")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    seeds = [int(s) for s in args.noise_seeds.split(",")]
    if len(seeds) < 2:
        ap.error("--noise-seeds needs at least two seeds to measure a spread, e.g. --noise-seeds 0,1,2")
    for temp in [float(t) for t in args.temperatures.split(",")]:
        cfg = load_config(TrainRunConfig, None, [*args.overrides, f"sampler.temperature={temp}"], apply_method_preset)

        def show(seed, res, temp=temp):
            m = res.metrics
            print(f"temperature {temp}, noise seed {seed}: reward {m['reward_mean']:.3f} +- "
                  f"{m['reward_sem']:.3f} (s.e.), word accuracy {m['word_acc']:.3f}", flush=True)

        results, records = evaluate_at_seeds(cfg, seeds, show)
        means = [r.metrics["reward_mean"] for r in results]
        accs = [r.metrics["word_acc"] for r in results]
        print(f"temperature {temp}, {len(records)} prompts: reward {np.mean(means):.3f}, std over "
              f"{len(seeds)} noise seeds {np.std(means, ddof=1):.3f}; word accuracy {np.mean(accs):.3f} "
              f"(std {np.std(accs, ddof=1):.3f})", flush=True)


if __name__ == "__main__":
    main()
