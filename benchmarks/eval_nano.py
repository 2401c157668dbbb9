"""How long does `varrl eval` take, and what does it report? The shipped nano model on the shipped
synthetic CVTG benchmark (100 prompts by default, round-robin over its 8 files), timed end to end as
a user runs it (a fresh `python -m varrl eval` process: imports, model load, OCR worker start-up).

With --ceiling it also scores the synthetic generator's own renderings of the same prompts
(`varrl data synth-cvtg --render`), i.e. what OCR reads off clean text: the best a generator can get.

    python benchmarks/eval_nano.py [--checkpoint DIR] [--limit 100] [--ocr-workers 2] [--ceiling]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from varrl.eval.cvtg import markdown_table
from varrl.eval.synthbench import build_synth_cvtg


def timed_eval(args: list[str], out: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "varrl", "eval", *args, "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, json.loads((out / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="model directory (default: the shipped nano model)")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--ocr-workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ceiling", action="store_true", help="also score the generator's reference renderings")
    ap.add_argument("--keep", default=None, help="keep the outputs in this folder")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="varrl_eval_nano_"))
    common = ["--limit", str(args.limit), "--ocr-workers", str(args.ocr_workers), "--seed", str(args.seed)]
    print(f"{os.cpu_count()} CPUs; outputs in {root}")
    model = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    seconds, m = timed_eval([*model, *common], root / "nano")
    print(f"\nnano model ({args.checkpoint or 'shipped'}): {m['scored']} prompts in {seconds:.1f} s "
          f"({m['scored'] / seconds:.2f} prompts/s, wall clock including start-up)\n")
    print(markdown_table(m))
    if args.ceiling:
        bench = build_synth_cvtg(root / "bench", render=root / "reference")
        seconds, m = timed_eval(["--images", str(root / "reference"), "--data", str(bench[0].parent.parent), *common],
                                root / "ceiling")
        print(f"\nreference renderings (OCR ceiling): {m['scored']} images in {seconds:.1f} s\n")
        print(markdown_table(m))


if __name__ == "__main__":
    main()
