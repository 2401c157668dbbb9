"""Does the model render readable text? OCR word accuracy on held-out one- and two-word prompts.

Held-out prompts use words that pretraining never saw (every 10th word of the list), drawn from
the distribution the model was pretrained on. Sampled with the default sampler unless options say otherwise.

    python benchmarks/ocr_nano.py [--checkpoint DIR] [--prompts 64] [--seed 0] [--grid out.png]
"""

from __future__ import annotations

import argparse
import json
import time

import varrl
from varrl.config import from_dict
from varrl.data.synth import SynthConfig
from varrl.eval.heldout import heldout_prompts, measure_word_accuracy
from varrl.ocr import OcrPool
from varrl.policy.load import shipped_model_dir
from varrl.textmetrics import WordStats, word_stats
from varrl.viz import image_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cfg", type=float, default=varrl.SamplerConfig().cfg)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=0.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--grid", default=None, help="write the samples with OCR reads to this PNG")
    args = ap.parse_args()
    policy = varrl.load_policy(args.checkpoint)
    meta_dir = args.checkpoint or shipped_model_dir()
    meta = json.loads((__import__("pathlib").Path(meta_dir) / "config.json").read_text())
    data = from_dict(SynthConfig, meta["trained"]["data"]) if "trained" in meta else SynthConfig()
    prompts, words = heldout_prompts(data, args.prompts, max_regions=2, seed=args.seed)
    sampler = varrl.SamplerConfig(cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
    t0 = time.perf_counter()
    with OcrPool(workers=1) as ocr:
        res = measure_word_accuracy(policy, prompts, words, sampler, args.seed, ocr)
    print(f"held-out prompts: {len(prompts)} ({sum(map(len, words))} words), {sampler}")
    print(f"word accuracy {res.word_acc:.3f}   NED {res.ned:.3f}   ({time.perf_counter() - t0:.0f} s)")
    by_regions: dict[int, WordStats] = {}
    for w, r in zip(words, res.reads):
        by_regions[len(w)] = by_regions.get(len(w), WordStats()) + word_stats(w, r)
    for n, st in sorted(by_regions.items()):
        print(f"  {n}-word prompts: {st.n // n:3d} prompts, word accuracy {st.word_acc:.3f}   NED {st.ned:.3f}")
    if args.grid:
        caps = [f"{p} | read: {' '.join(r)}" for p, r in zip(res.prompts, res.reads)]
        image_grid(res.images, caps, cols=8, caption_lines=4).save(args.grid)
        print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
