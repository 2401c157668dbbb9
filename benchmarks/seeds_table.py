"""The README's seed tables, from finished run directories: one row per run (held-out reward and
word accuracy at every evaluation, NED and KL at the end, wall time), then the means, the spread
between seeds and the change from step 0 with its standard error over seeds.

    python benchmarks/seeds_table.py runs/seed0 runs/seed1 runs/seed2
    python benchmarks/seeds_table.py --vs runs/base_seed0,runs/base_seed1 runs/lever_seed0 runs/lever_seed1

With --vs (as many runs as the positional ones, seed by seed) it also prints the final held-out
reward and word accuracy of each run against its pair: the paired difference, seed by seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def read_run(path: Path) -> dict:
    report = path / "report.json"
    if not report.is_file():
        raise SystemExit(f"{path}: no report.json (the run has not finished; `varrl train --resume {path}` ends it)")
    return json.loads(report.read_text())


def last_kl(report: dict) -> float:
    """The KL per token of the last update, of the stage that updated last."""
    stages = report.get("kl_to_start") or {}
    return max((s["last"] for s in stages.values()), default=float("nan"))


def seeds_se(d: np.ndarray) -> float:
    """Standard error of the mean of per-seed values (nan for one seed)."""
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")


def change_summary(start: np.ndarray, end: np.ndarray) -> str:
    d = end - start
    se = seeds_se(d)
    return f"{start.mean():.3f} -> {end.mean():.3f} (change {d.mean():+.3f} +- {se:.3f} s.e. over seeds; " \
           f"final spread {end.max() - end.min():.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--vs", default=None, help="comma-separated runs to pair with the positional ones")
    args = ap.parse_args()
    reports = [read_run(p) for p in args.runs]
    print("| run | held-out reward by step | word accuracy | NED at the end | KL per token at the end | wall time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path, r in zip(args.runs, reports):
        ev = r["eval"]
        steps = "/".join(str(e["step"]) for e in ev)
        reward = " / ".join(f"{e['reward_mean']:.3f}" for e in ev)
        acc = " / ".join(f"{e['word_acc']:.3f}" for e in ev)
        wall = f"{r['wall_s'] / 60:.1f} min" if r.get("wall_s") else "?"
        print(f"| {path.name} (steps {steps}) | {reward} (s.e. {ev[-1]['reward_sem']:.3f}) | {acc} | "
              f"{ev[-1]['ned']:.3f} | {last_kl(r):.3f} | {wall} |")
    start = np.array([r["eval"][0]["reward_mean"] for r in reports])
    end = np.array([r["eval"][-1]["reward_mean"] for r in reports])
    acc0 = np.array([r["eval"][0]["word_acc"] for r in reports])
    acc1 = np.array([r["eval"][-1]["word_acc"] for r in reports])
    print(f"\nheld-out reward: {change_summary(start, end)}")
    print(f"word accuracy:   {change_summary(acc0, acc1)}")
    sem = np.mean([r["eval"][-1]["reward_sem"] for r in reports])
    print(f"one evaluation's own standard error at the end: {sem:.3f}")
    if args.vs:
        pairs = [Path(p) for p in args.vs.split(",")]
        if len(pairs) != len(reports):
            raise SystemExit(f"--vs names {len(pairs)} runs for {len(reports)} positional ones: pair them seed by seed")
        base = [read_run(p) for p in pairs]
        dr = np.array([r["eval"][-1]["reward_mean"] - b["eval"][-1]["reward_mean"] for r, b in zip(reports, base)])
        da = np.array([r["eval"][-1]["word_acc"] - b["eval"][-1]["word_acc"] for r, b in zip(reports, base)])
        print(f"against --vs, seed by seed: reward {' '.join(f'{x:+.3f}' for x in dr)} (mean {dr.mean():+.3f} "
              f"+- {seeds_se(dr):.3f} s.e.), word accuracy {' '.join(f'{x:+.3f}' for x in da)} "
              f"(mean {da.mean():+.3f} +- {seeds_se(da):.3f} s.e.)")


if __name__ == "__main__":
    main()
