"""Learning curves of a pretraining run: losses and OCR word accuracy over steps, as one PNG.

    python benchmarks/pretrain_curve.py runs/nano --out docs/pretrain_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln] if path.exists() else []


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir")
    ap.add_argument("--out", default="pretrain_curve.png")
    ap.add_argument("--tokenizer-run", default=None,
                    help="run whose tokenizer curves to show (a phase that reused a tokenizer has none)")
    args = ap.parse_args()
    run = Path(args.run_dir)
    tok_run = Path(args.tokenizer_run) if args.tokenizer_run else run
    tok, model = read(tok_run / "tokenizer" / "metrics.jsonl"), read(run / "model" / "metrics.jsonl")
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    if tok:
        ax[0].plot(*series(tok, "tok/l1"), lw=0.8, label="L1 (text-weighted)")
        ax[0].legend()
    else:  # a phase that reused a tokenizer: say so rather than draw empty axes
        ax[0].text(0.5, 0.5, "tokenizer reused from an earlier phase\n(pass --tokenizer-run)", ha="center",
                   va="center", transform=ax[0].transAxes)
    ax[0].set(title="tokenizer loss", xlabel="step")
    ax[1].plot(*series(model, "model/loss"), lw=0.8, label="cross-entropy")
    ax[1].set(title="transformer loss", xlabel="step")
    ax[1].legend()
    ax[2].plot(*series(tok, "tok/recon_word_acc"), "o-", label="tokenizer reconstructions")
    ax[2].plot(*series(model, "eval/word_acc"), "s-", label="transformer samples (held-out prompts)")
    ax[2].plot(*series(model, "eval/ned"), "^--", label="transformer samples: NED")
    ax[2].set(title="OCR word accuracy (NED dashed)", xlabel="step (of each stage)", ylim=(0, 1))
    ax[2].legend(fontsize=8)
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
