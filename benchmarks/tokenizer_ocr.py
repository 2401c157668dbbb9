"""Does the tokenizer keep text legible? OCR word accuracy on reconstructions of held-out images.

Held-out synthetic images (words never used in training), encoded to tokens and decoded back,
read by the OCR engine; the originals are read too, as the ceiling.

    python benchmarks/tokenizer_ocr.py [--checkpoint DIR] [--images 128] [--narrow] [--grid out.png]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import varrl
from varrl.config import from_dict
from varrl.data.synth import SynthConfig, SynthGenerator
from varrl.ocr import OcrPool
from varrl.policy.load import shipped_model_dir
from varrl.recipes.common import synth_batch
from varrl.textmetrics import word_hits
from varrl.viz import image_grid, to_uint8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--narrow", action="store_true",
                    help="use the transformer's narrowed training distribution instead of the full range")
    ap.add_argument("--grid", default=None)
    args = ap.parse_args()
    policy = varrl.load_policy(args.checkpoint)
    meta = json.loads((Path(args.checkpoint or shipped_model_dir()) / "config.json").read_text())
    data = from_dict(SynthConfig, meta["trained"]["data"]) if args.narrow else SynthConfig()
    gen = SynthGenerator(data, "heldout", seed=1)
    t0 = time.perf_counter()
    tok = policy.tokenizer
    originals, recons, samples = [], [], []
    for start in range(0, args.images, 16):
        img, batch = synth_batch(gen, start, min(16, args.images - start))
        with torch.no_grad():
            rec = tok.decode(tok.encode(img))
        originals += list(to_uint8(img))
        recons += list(to_uint8(rec))
        samples += batch
    total = sum(len(s.words) for s in samples)
    with OcrPool(workers=1) as ocr:
        for name, images in (("originals", originals), ("reconstructions", recons)):
            reads = ocr.read(images)
            hits = sum(word_hits(s.words, [w.text for w in r]) for s, r in zip(samples, reads))
            print(f"{name:16s} word accuracy {hits / total:.3f} ({hits}/{total} words, {len(images)} images)")
    print(f"distribution: {'narrowed (model training)' if args.narrow else 'full synthetic range'}; "
          f"{time.perf_counter() - t0:.0f} s")
    if args.grid:
        pairs = [im for pair in zip(originals[:16], recons[:16]) for im in pair]
        image_grid(pairs, cols=8).save(args.grid)
        print(f"wrote {args.grid} (original, reconstruction pairs)")


if __name__ == "__main__":
    main()
