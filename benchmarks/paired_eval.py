"""What did training change, read against its own error? A paired held-out evaluation of finished runs.

For each run directory the script evaluates the model the run started from and the run's final
model (`<run>/last`) on the run's held-out prompts, with the same noise seeds on both sides, and
prints the paired change in reward and word accuracy with its standard error over prompts
(`varrl.eval.paired`). Then, over the runs (seeds of one configuration), the mean change with its
standard error over seeds and the evaluation's own standard error of it (per prompt, the change
averaged over the runs), and the spread of the final rewards: a gain must clear all three
(issue 18's test). A run's own step-0 and final
evaluations draw `train.eval_noise_seeds` noise seeds each (default 1; its report.md pairs them the
same way); averaging several takes the sampling luck out of both ends.
Every model samples with its run's own sampler settings (config.yaml), so a run that samples
sharper is compared with the untrained model at that same setting.

    python benchmarks/paired_eval.py runs/seed0 runs/seed1 runs/seed2 [--noise-seeds 0,1,2,3] [--set key=value ...]
    python benchmarks/paired_eval.py runs/ablation_default/{no_vmr,no_mp}/seed{0,1,2}   # one summary per folder
    python benchmarks/paired_eval.py runs/ablation_default/{var_rl,grpo}/seed{0,1,2} --reference var_rl

Runs in one folder are taken as seeds of one configuration: with runs from several folders (the
cells of `varrl ablate`) the start is evaluated once and each folder gets its own summary;
`--reference CELL` then compares every other cell with that one, seed by seed, with the
evaluation's own standard error of the difference.
`--prompts train` evaluates instead on the first train.eval_prompts prompts each run trained on
(the start on each run's own): whether the update learnt what it saw, carried over or not.
`--prompts both` reads held-out and seen prompts with the same noise seeds and then prints, run by
run, the seen change minus the held-out change, with its standard error over runs:

    python benchmarks/paired_eval.py runs/ablation_default/grpo/seed{0,1,2} --prompts both --noise-seeds 0,1

Each model's reading at each noise seed is kept (`--cache`, default ~/.cache/varrl/paired_eval;
eval_cache.py) under a key of the content of everything it depends on, so comparing a second cell
with the same reference reads only the new cell; `--no-cache` reads everything afresh.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_cache import default_cache_dir, readings  # noqa: E402
from seeds_table import seeds_se  # noqa: E402

from varrl.config import load_config
from varrl.config_types import to_dict
from varrl.eval.paired import paired_change
from varrl.trainer.config import TrainRunConfig, apply_method_preset


def evaluations(cfg: TrainRunConfig, seeds: list[int], cache: Path | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """[S, P] rewards and words read right at each noise seed, the prompts' word counts, and each
    seed's word accuracy as the run's own evaluation reports it (from the cache where there)."""
    got, hits = readings(cfg, seeds, cache)
    if hits:
        print(f"  ({cfg.policy.path or 'the shipped nano model'}: {hits} of {len(seeds)} noise seeds from the "
              f"cache {cache})", file=sys.stderr)
    return (np.stack([g["scores_P"] for g in got]), np.stack([g["words_right_P"] for g in got]), got[0]["n_words_P"],
            [float(g["word_acc"]) for g in got])


def seen_prompts_file(cfg: TrainRunConfig, n: int, folder: Path) -> Path:
    """A JSONL file of the first n prompts the run of cfg trained on (its first n / prompts_per_step
    steps), for an evaluation on them instead of the held-out split."""
    from varrl.data.prompts import ClassPrompts
    from varrl.trainer.loop import prompt_sources

    train, _ = prompt_sources(cfg)
    if isinstance(train, ClassPrompts):
        raise SystemExit("--prompts train needs text prompts (a class-conditional run has no words to read)")
    path = folder / f"seen_{cfg.run.seed}.jsonl"
    path.write_text("".join(json.dumps({"prompt": r.prompt, "words": list(r.words), **r.meta}) + "\n"
                            for r in (train[i] for i in range(n))))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="finished run directories (one configuration, several seeds)")
    ap.add_argument("--noise-seeds", default="0,1,2,3",
                    help="evaluation noise seeds (0 is what a run's own evaluations use)")
    ap.add_argument("--prompts", choices=["heldout", "train", "both"], default="heldout",
                    help="heldout: the runs' held-out prompts; train: the first train.eval_prompts prompts each run "
                         "trained on (did the update learn what it saw, whether or not it carries over?); both: "
                         "each, then the seen change minus the held-out change run by run")
    ap.add_argument("--reference", metavar="FOLDER",
                    help="with runs from several folders (cells): the folder name of the cell every other is "
                         "compared with, seed by seed (runs of one name, e.g. seed0, paired), with the "
                         "evaluation's own s.e. of the difference")
    ap.add_argument("--cache", type=Path, default=default_cache_dir(),
                    help="where readings are kept, by the content of the model, prompts, settings and code "
                         "(default: %(default)s); a model read before is not read again")
    ap.add_argument("--no-cache", action="store_true", help="read every model afresh and keep nothing")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides for every model's evaluation, e.g. train.threads=2 train.eval_prompts=256")
    args = ap.parse_args()
    seeds = [int(s) for s in args.noise_seeds.split(",")]
    cache = None if args.no_cache else args.cache
    checked = load_runs(args.runs, args.set)  # every run checked before the first (slow) evaluation
    if args.reference is not None:
        named = {run.resolve().parent for run in args.runs if run.resolve().parent.name == args.reference}
        if len(named) != 1:
            raise SystemExit(f"--reference {args.reference}: " + ("no run given lies in a folder of that name"
                             if not named else f"{len(named)} folders of that name hold runs; give runs of one"))
    readings = ["heldout", "train"] if args.prompts == "both" else [args.prompts]
    changes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for prompts in readings:
            cfgs = copy.deepcopy(checked)  # a reading points its copies at other prompts and at last/
            if prompts == "train":  # each run's own prompts: the start is evaluated on each run's set
                starts = []
                for cfg in cfgs:
                    cfg.data.eval_prompts_file = str(seen_prompts_file(cfg, cfg.train.eval_prompts, Path(tmp)))
                    starts.append(evaluations(cfg, seeds, cache))
            else:
                starts = [evaluations(cfgs[0], seeds, cache)] * len(cfgs)
            changes[prompts] = compare(args.runs, cfgs, starts, seeds, prompts, cache)
            if args.reference is not None:
                against_reference(args.runs, changes[prompts], args.reference)
    if len(readings) == 2:
        seen_minus_heldout(args.runs, changes["train"][:2], changes["heldout"][:2])


def load_runs(runs: list[Path], overrides: list[str]) -> list[TrainRunConfig]:
    """The runs' configs, checked to be finished runs whose start is one model evaluated one way."""
    cfgs = []
    for run in runs:
        if not (run / "config.yaml").is_file() or not (run / "last").is_dir():
            raise SystemExit(f"{run}: not a finished run directory (needs config.yaml and last/)")
        cfgs.append(load_config(TrainRunConfig, run / "config.yaml", overrides, apply_method_preset))
    # The runs must share what the start's evaluation depends on, or one start would not pair with all.
    shared = ("policy", "sampler", "reward", "data")
    for run, cfg in zip(runs[1:], cfgs[1:]):
        for key in shared:
            if to_dict(getattr(cfg, key)) != to_dict(getattr(cfgs[0], key)):
                raise SystemExit(f"{run}: its `{key}` section differs from {runs[0]}'s, so one start cannot "
                                 f"pair with both: compare runs of one configuration")
        if (cfg.train.eval_seed, cfg.train.eval_prompts) != (cfgs[0].train.eval_seed, cfgs[0].train.eval_prompts):
            raise SystemExit(f"{run}: train.eval_seed / train.eval_prompts differ from {runs[0]}'s")
    return cfgs


def seen_minus_heldout(runs: list[Path], seen: tuple[list[float], list[float]],
                       heldout: tuple[list[float], list[float]]) -> None:
    """Run by run, how much more the update moved the prompts it trained on than held-out ones: a
    positive difference is learning that does not carry over to unseen words."""
    print("\n| run | seen minus held-out: reward | word accuracy |\n| --- | --- | --- |")
    d_r = np.array(seen[0]) - np.array(heldout[0])
    d_w = np.array(seen[1]) - np.array(heldout[1])
    for run, r, w in zip(runs, d_r, d_w):
        print(f"| {run.resolve().parent.name}/{run.name} | {r:+.3f} | {w:+.3f} |")
    if len(runs) > 1:
        print(f"\nseen minus held-out over {len(runs)} runs: reward {d_r.mean():+.3f} +- {seeds_se(d_r):.3f} "
              f"({int((d_r > 0).sum())} of {len(runs)} positive), word accuracy {d_w.mean():+.3f} +- "
              f"{seeds_se(d_w):.3f} ({int((d_w > 0).sum())} of {len(runs)} positive)")


def compare(runs: list[Path], cfgs: list[TrainRunConfig], starts: list, seeds: list[int],
            prompts: str, cache: Path | None) -> tuple[list[float], list[float]]:
    """Each run's final model against its start, paired by prompt and noise seed; one summary per
    folder of runs. Returns each run's change in reward and in word accuracy."""
    which = "held-out" if prompts == "heldout" else "seen (each run's first training prompts)"
    print(f"start ({cfgs[0].policy.path or 'the shipped nano model'}), {len(starts[0][2])} {which} prompts, "
          f"noise seeds {seeds}: reward {np.mean([np.nanmean(s[0]) for s in starts]):.3f}, word accuracy "
          f"{np.mean([np.mean(s[3]) for s in starts]):.3f}", flush=True)
    print(f"\n| run | {which} reward, start -> end | paired change (s.e.) | word accuracy, start -> end | "
          "paired change (s.e.) |\n| --- | --- | --- | --- | --- |")
    ends, d_r, d_w, arrays = [], [], [], []
    several = len({run.resolve().parent for run in runs}) > 1

    def label(run: Path) -> str:  # seed0 of two cells would read alike
        return f"{run.resolve().parent.name}/{run.name}" if several else run.name

    for run, cfg, (start_r, start_w, n_words, start_acc) in zip(runs, cfgs, starts):
        cfg.policy.path = str(run / "last")
        end_r, end_w, _, end_acc = evaluations(cfg, seeds, cache)
        (cr, sr, _), (cw, sw, _) = paired_change(start_r, end_r), paired_change(start_w, end_w, n_words)
        ends.append(float(np.nanmean(end_r)))
        arrays.append((start_r, end_r, start_w, end_w, n_words))
        d_r.append(cr)
        d_w.append(cw)
        print(f"| {label(run)} | {np.nanmean(start_r):.3f} -> {ends[-1]:.3f} | {cr:+.3f} ({sr:.3f}) | "
              f"{np.mean(start_acc):.3f} -> {np.mean(end_acc):.3f} | {cw:+.3f} ({sw:.3f}) |", flush=True)
    # Runs in one folder are seeds of one configuration (runs/<cell>/seed<k> for varrl ablate): one
    # summary per folder, so several cells share the one evaluation of the start.
    groups: dict[Path, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(run.resolve().parent, []).append(i)
    for folder, idx in groups.items():
        if len(idx) > 1:
            summarize([d_r[i] for i in idx], [d_w[i] for i in idx], [ends[i] for i in idx],
                      pooled_eval_se([arrays[i] for i in idx]), folder.name if len(groups) > 1 else None)
    if len(groups) > 1:  # and over every run given, for a reading that spans configurations
        summarize(d_r, d_w, ends, pooled_eval_se(arrays), "all runs")
    return d_r, d_w, arrays


def against_reference(runs: list[Path], changes: tuple, reference: str) -> None:
    """Every other folder's runs against the reference folder's run of the same name (seedK: the
    same training prompts and first rollout noise): the mean difference in paired change with its
    s.e. over seeds, and the evaluation's own s.e. of it (per prompt, the cell's end minus the
    reference's, averaged over seeds and noise seeds; the start cancels)."""
    d_r, d_w, arrays = changes
    by_folder: dict[Path, dict[str, int]] = {}
    for i, run in enumerate(runs):
        by_folder.setdefault(run.resolve().parent, {})[run.name] = i
    ref_folder = next(f for f in by_folder if f.name == reference)  # main() checked it is the one
    ref = by_folder[ref_folder]
    print(f"\n| cell against {reference}, seed by seed | reward (s.e. over seeds; the evaluation's s.e.) | "
          "higher | word accuracy (the same) |\n| --- | --- | --- | --- |")
    for folder, idx in by_folder.items():
        if folder == ref_folder:
            continue
        pairs = [(i, ref[name]) for name, i in idx.items() if name in ref]
        if not pairs:
            print(f"| {folder.name} | no run named like one of {reference}'s | | |")
            continue
        dr = np.array([d_r[i] - d_r[j] for i, j in pairs])
        dw = np.array([d_w[i] - d_w[j] for i, j in pairs])
        se_r, se_w = difference_eval_se([arrays[i] for i, _ in pairs], [arrays[j] for _, j in pairs])
        print(f"| {folder.name} ({len(pairs)} seeds) | {dr.mean():+.3f} ({seeds_se(dr):.3f}; {se_r:.3f}) | "
              f"{int((dr > 0).sum())} of {len(pairs)} | {dw.mean():+.3f} ({seeds_se(dw):.3f}; {se_w:.3f}) |")


def difference_eval_se(cell: list[tuple], ref: list[tuple]) -> tuple[float, float]:
    """The evaluation's s.e. of the cell's mean change minus the reference's, in reward and word
    accuracy: the per-prompt difference of the two cells' ends (runs paired in order; the start
    cancels), its error over prompts."""
    return stacked_se([r[1] for r in ref], [c[1] for c in cell], [r[3] for r in ref], [c[3] for c in cell],
                      cell + ref)


def pooled_eval_se(arrays: list[tuple]) -> tuple[float, float]:
    """The evaluation's own standard error of the runs' mean change, in reward and in word accuracy:
    per prompt the change averaged over every run and noise seed, its error over prompts. The s.e.
    over runs cannot stand in for it: runs read on the same prompts with the same noise share the
    evaluation's luck, so three runs that agree have an s.e. over runs near 0 while the prompts'
    error stays."""
    return stacked_se([a[0] for a in arrays], [a[1] for a in arrays], [a[2] for a in arrays],
                      [a[3] for a in arrays], arrays)


def stacked_se(before_r: list, after_r: list, before_w: list, after_w: list, arrays: list[tuple]
               ) -> tuple[float, float]:
    """`paired_change`'s error over prompts of after - before, with every run's [S, P] readings
    stacked on the seed axis (so per prompt the mean over runs and noise seeds), in reward and in
    words read right (weighted by the runs' mean target words: a run's own prompts under `--prompts
    train` differ in words)."""
    words_P = np.mean([a[4] for a in arrays], axis=0)
    return (paired_change(np.concatenate(before_r), np.concatenate(after_r))[1],
            paired_change(np.concatenate(before_w), np.concatenate(after_w), words_P)[1])


def summarize(d_r: list[float], d_w: list[float], ends: list[float], eval_se: tuple[float, float],
              name: str | None) -> None:
    """The mean change over one configuration's runs, its s.e. over runs and the evaluation's own
    s.e. of it, and whether it is a gain: beyond both doubled and, in reward, beyond the spread of
    the final rewards (issue 18's test)."""
    R = len(d_r)
    se_r, se_w = seeds_se(np.array(d_r)), seeds_se(np.array(d_w))
    spread = max(ends) - min(ends)
    print(f"\n{name + ': ' if name else ''}over {R} runs: reward change {np.mean(d_r):+.3f} +- {se_r:.3f} (s.e. over "
          f"runs; {sum(d > 0 for d in d_r)} of {R} higher; the evaluation's s.e. {eval_se[0]:.3f}), final "
          f"{np.mean(ends):.3f}, final spread {spread:.3f}; word accuracy change {np.mean(d_w):+.3f} +- {se_w:.3f} "
          f"(the evaluation's s.e. {eval_se[1]:.3f})")
    bar_r, bar_w = max(2 * se_r, 2 * eval_se[0], spread), max(2 * se_w, 2 * eval_se[1])
    print(f"reward: the change is {'' if np.mean(d_r) > bar_r else 'not '}a gain beyond 2 s.e. over runs "
          f"({2 * se_r:.3f}), 2 s.e. of the evaluation ({2 * eval_se[0]:.3f}) and the spread between runs "
          f"({spread:.3f}); word accuracy: {'' if np.mean(d_w) > bar_w else 'not '}a gain beyond 2 s.e. over "
          f"runs ({2 * se_w:.3f}) and of the evaluation ({2 * eval_se[1]:.3f})")


if __name__ == "__main__":
    main()
