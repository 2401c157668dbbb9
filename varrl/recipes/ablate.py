"""`varrl ablate`: every cell of a grid of config values x seeds, each a normal run directory, then a
paper-style table (mean +- std over seeds of the final held-out reward, word accuracy and NED).

Cells come from `--grid` axes (their cartesian product) and from named `--cell`s (a paper-style
"method minus one component" list is not a product). Resumable: finished runs (report.json
present) are skipped, interrupted ones resume from their last checkpoint; `--report-only` tabulates
the runs finished so far, so an ablation that spans sessions can be read part-way."""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from varrl.checkpoint import atomic_write_text
from varrl.config import ConfigError, load_config
from varrl.trainer.config import TrainRunConfig, apply_method_preset


@dataclass
class Cell:
    name: str
    overrides: list[str]  # key=value, one per grid axis


def parse_grid(specs: list[str]) -> list[Cell]:
    """["rl.panw.alpha=0.6,0.8", "rl.method=grpo,var_rl"] -> the cartesian product as cells."""
    axes = []
    for spec in specs:
        if "=" not in spec or not spec.split("=", 1)[0].strip():
            raise ConfigError(f"--grid {spec!r}: expected KEY=V1,V2,... (e.g. rl.panw.alpha=0.6,0.8)")
        key, raw = (part.strip() for part in spec.split("=", 1))
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not values:
            raise ConfigError(f"--grid {spec!r}: give at least one value, e.g. {key}=0.6,0.8")
        axes.append([(key, v) for v in values])
    cells = []
    for combo in itertools.product(*axes):
        name = "_".join(f"{k.split('.')[-1]}={v}" for k, v in combo) or "base"
        cells.append(Cell(_safe(name), [f"{k}={v}" for k, v in combo]))
    return cells


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", name)


def parse_cells(specs: list[str]) -> list[Cell]:
    """["no_vmr: rl.vmr.enabled=false", "grpo: rl.method=grpo"] -> named cells (NAME: KEY=VALUE ...,
    the overrides split like a shell command line, so a quoted value may hold spaces)."""
    cells = []
    for spec in specs:
        name, sep, rest = spec.partition(":")
        name = name.strip()
        if not sep or not name or _safe(name) != name:
            raise ConfigError(f"--cell {spec!r}: expected 'NAME: KEY=VALUE ...' with a name of letters, digits "
                              f"and '_.=+-', e.g. --cell 'no_vmr: rl.vmr.enabled=false'")
        overrides = shlex.split(rest)
        bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
        if bad:
            raise ConfigError(f"--cell {name}: {bad[0]!r} is not KEY=VALUE")
        cells.append(Cell(name, overrides))
    return cells


def run_ablation(config: str | None, grid: list[str], seeds: int, steps: int | None, name: str | None,
                 overrides: list[str], cell_specs: list[str] | None = None,
                 report_only: bool = False, reference: str | None = None, jobs: int = 1, say=print) -> Path:
    from varrl.recipes.train import run_train
    from varrl.stop import as_stopped

    cells = (parse_grid(grid) if grid or not cell_specs else []) + parse_cells(cell_specs or [])
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError(f"two cells share the name {next(n for n in names if names.count(n) > 1)!r}; "
                          "give every --cell its own name")
    if reference is not None and reference not in names:
        raise ConfigError(f"--reference {reference!r} is not a cell; the cells are: {', '.join(names)}")
    base = load_config(TrainRunConfig, config, overrides, apply_method_preset)
    root = Path(base.run.dir) / (name or f"ablate_{Path(config).stem if config else 'default'}")
    extra = [f"train.steps={steps}"] if steps else []
    for cell in cells:  # validate every cell before the first long run starts
        load_config(TrainRunConfig, config, [*overrides, *cell.overrides, *extra], apply_method_preset)
    if jobs > 1 and not report_only:
        from varrl.errors import RunFailedError

        try:
            _run_side_by_side(config, cells, seeds, root, overrides, extra, base.train.threads, jobs, say)
        except RunFailedError:
            summarize(root, cells, seeds, reference)  # the table of the runs that did finish
            raise
    for _, run_dir, new_run in [] if report_only or jobs > 1 else _pending(cells, seeds, root, overrides, extra):
        try:
            if new_run is None:
                run_train(None, [], str(run_dir))
            else:
                run_train(config, new_run, None)
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the grid goes on from here when rerun
            raise as_stopped(e, RERUN_HINT) from None
    summarize(root, cells, seeds, reference)
    return root


RERUN_HINT = ("run the same varrl ablate command again to go on: finished runs are skipped and the others "
              "resume from their last checkpoint")


def _pending(cells: list[Cell], seeds: int, root: Path, overrides: list[str], extra: list[str]):
    """(cell/seedK, run folder, the overrides of a new run or None to resume it) for every run of
    the grid without a report.json, in cell-major order."""
    for cell in cells:
        for seed in range(seeds):
            run_dir = root / cell.name / f"seed{seed}"
            if (run_dir / "report.json").exists():
                continue
            new_run = None if (run_dir / "config.yaml").exists() else [
                *overrides, *cell.overrides, *extra, f"run.dir={root / cell.name}", f"run.name=seed{seed}",
                f"run.seed={seed}"]
            yield f"{cell.name}/seed{seed}", run_dir, new_run


def _run_side_by_side(config: str | None, cells: list[Cell], seeds: int, root: Path, overrides: list[str],
                      extra: list[str], threads: int, jobs: int, say) -> None:
    """The unfinished runs as `jobs` `varrl train` processes at a time (ablate_jobs), each the same
    command the in-process loop above would run."""
    from varrl.recipes.ablate_jobs import Job, run_jobs

    if threads == 0:
        say(f"varrl ablate: warning: --jobs {jobs} with train.threads=0 (torch's default: every core) "
            f"runs {jobs} runs that each use every core; set train.threads to about cores / {jobs}")
    todo = [Job(label, ["train", "--resume", str(run_dir)] if new_run is None else
                ["train", *(["--config", config] if config else []), *new_run], run_dir.with_suffix(".log"))
            for label, run_dir, new_run in _pending(cells, seeds, root, overrides, extra)]
    try:
        run_jobs(todo, jobs, say)
    except KeyboardInterrupt as e:
        from varrl.stop import as_stopped

        raise as_stopped(e, f"the runs were stopped at their last step: {RERUN_HINT}") from None


def summarize(root: Path, cells: list[Cell], seeds: int, reference: str | None = None) -> dict:
    """ablation.json, ablation.md and ablation.png from the cells' report.json files."""
    out = {"cells": []}
    for cell in cells:
        reports = [root / cell.name / f"seed{s}" / "report.json" for s in range(seeds)]
        done = [s for s, r in enumerate(reports) if r.exists()]  # part-way: the finished runs only
        evals = [json.loads(reports[s].read_text())["eval"] for s in done]
        out["cells"].append({"name": cell.name, "overrides": cell.overrides, "seeds": len(evals), "seed_ids": done,
                             "start": _stats([e[0] for e in evals if e]), "final": _stats([e[-1] for e in evals if e]),
                             "final_step": [e[-1]["step"] for e in evals if e], "curves": evals})
    ref = reference or (cells[0].name if cells else None)
    out["reference"] = ref
    ref_finals = next((_finals(c) for c in out["cells"] if c["name"] == ref), {})
    out["paired"] = [{"name": c["name"], **paired_differences(_finals(c), ref_finals)}
                     for c in out["cells"] if c["name"] != ref]
    atomic_write_text(root / "ablation.json", json.dumps(out, indent=1))

    def pm(d):
        if d["mean"] is None:
            return "n/a"
        return f"{d['mean']:.3f}" if len(d["values"]) < 2 else f"{d['mean']:.3f} +- {d['std']:.3f}"  # no std of one

    lines = [f"# Ablation `{root.name}`", "",
             f"Held-out evaluation, mean +- sample std over the finished seeds (of {seeds}): "
             "at step 0 (the starting model) and at the last step.", "",
             "| cell | overrides | seeds | reward (start) | reward (final) | word acc (start) | word acc (final) "
             "| NED (final) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in out["cells"]:
        a, f = c["start"], c["final"]
        lines.append(f"| {c['name']} | {' '.join(c['overrides']) or 'base'} | {c['seeds']}/{seeds} | "
                     f"{pm(a['reward_mean'])} | {pm(f['reward_mean'])} | "
                     f"{pm(a['word_acc'])} | {pm(f['word_acc'])} | {pm(f['ned'])} |")
    if out["paired"]:
        lines += ["", f"Paired by seed against `{ref}`: each cell's final evaluation minus `{ref}`'s of the "
                  "same seed (the same training prompts and first rollout noise), mean "
                  "+- sample std over the seeds both have finished; 'higher' counts the seeds where the cell "
                  "ends above the reference in reward.", "",
                  "| cell | seeds | d reward | d word acc | d NED | higher |", "|---|---:|---:|---:|---:|---:|"]
        for d in out["paired"]:
            lines.append(f"| {d['name']} | {d['seeds']} | {pm(d['reward_mean'])} | {pm(d['word_acc'])} | "
                         f"{pm(d['ned'])} | {d['higher']}/{d['seeds']} |")
    lines += ["", "Per run (start -> final):", ""]
    for c in out["cells"]:
        for s_, run in zip(c["seed_ids"], c["curves"]):
            if run:
                lines.append(f"- {c['name']} seed {s_}: reward {run[0]['reward_mean']:.3f} -> "
                             f"{run[-1]['reward_mean']:.3f}, word acc {_f(run[0]['word_acc'])} -> "
                             f"{_f(run[-1]['word_acc'])} (step {run[-1]['step']})")
    lines += ["", "![eval curves](ablation.png)", ""]
    atomic_write_text(root / "ablation.md", "\n".join(lines))
    _plot(root, out["cells"])
    return out


def _stats(rows: list[dict]) -> dict:
    return {k: _spread([r[k] for r in rows if r[k] is not None]) for k in ("reward_mean", "word_acc", "ned")}


def _spread(v: list[float]) -> dict:
    # The sample std (n - 1): with the 2-3 seeds an ablation affords, the population std would
    # understate the spread by a factor of 1.2-1.4. None for one value: no spread to report.
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
            "values": v}


def _finals(cell: dict) -> dict[int, dict]:
    """seed -> that seed's final evaluation row, for the seeds of a cell that finished."""
    return {s: run[-1] for s, run in zip(cell["seed_ids"], cell["curves"]) if run}


def paired_differences(cell: dict[int, dict], ref: dict[int, dict]) -> dict:
    """Per-seed differences cell - reference of the final reward, word accuracy and NED, over the seeds
    both have. Runs of one seed share their training prompts and first rollout noise, so the
    difference of a pair cancels what the two runs share, which a difference of two means over
    seeds does not."""
    seeds = sorted(set(cell) & set(ref))
    out: dict = {"seeds": len(seeds), "seed_ids": seeds}
    for k in ("reward_mean", "word_acc", "ned"):
        out[k] = _spread([cell[s][k] - ref[s][k] for s in seeds if None not in (cell[s][k], ref[s][k])])
    out["higher"] = sum(cell[s]["reward_mean"] > ref[s]["reward_mean"] for s in seeds)
    return out


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _plot(root: Path, cells: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, c in enumerate(cells):
        if not c["curves"]:
            continue  # no finished seed yet: nothing to draw, no legend entry
        # 10 colours x 3 line styles: a paper-sized ablation has more than 10 cells.
        style = {"color": f"C{i % 10}", "linestyle": ("-", "--", ":")[i // 10 % 3], "marker": "o", "ms": 3}
        for ax, key in zip(axes, ("reward_mean", "word_acc")):
            steps = sorted({e["step"] for run in c["curves"] for e in run})
            mean = [np.mean([e[key] for run in c["curves"] for e in run if e["step"] == s and e[key] is not None]
                            or [np.nan]) for s in steps]
            ax.plot(steps, mean, label=c["name"], **style)
    axes[0].set(xlabel="step", title="held-out reward (mean over seeds)")
    axes[1].set(xlabel="step", title="held-out word accuracy (mean over seeds)")
    if any(c["curves"] for c in cells):
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "ablation.png", dpi=100)
    plt.close(fig)
