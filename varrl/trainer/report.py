"""What a run leaves behind besides checkpoints: metrics (JSONL, TensorBoard when installed), the
reward plot, sample grids, and the final report.md / report.json. Only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from varrl.checkpoint import atomic_write_text
from varrl.rundir import MetricLog
from varrl.trainer.eval_record import clears, paired_since_start, verdict
from varrl.viz import image_grid


class RunWriter:
    def __init__(self, run_dir: Path, resume_step: int | None):
        self.run_dir = run_dir
        for sub in ("samples", "plots", "checkpoints"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        self.log = MetricLog(run_dir / "metrics.jsonl", resume_step)
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional: pip install tensorboard
            SummaryWriter = None
        if SummaryWriter is not None:
            # purge_step drops events a killed run wrote past its last checkpoint.
            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def metrics(self, step: int, values: dict) -> None:
        self.log.write(step, values)
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and np.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def samples(self, step: int, images: np.ndarray, captions: list[str], n: int) -> Path:
        path = self.run_dir / "samples" / f"step_{step:06d}.png"
        image_grid(images[:n], captions[:n], cols=min(8, n), caption_lines=5).save(path)
        return path

    def mask_sheet(self, step: int, images: np.ndarray, boxes: list[list] | None, grids: list[tuple[int, int]],
                   mp, n: int = 4) -> Path | None:
        """samples/masks_step_XXXXXX.png: per sample, the image with the reward's boxes, then the
        propagated MP mask at every grid (white: trained tokens) over a dimmed copy of the image."""
        if boxes is None:
            return None
        from PIL import Image, ImageDraw

        from varrl.algorithms.masks import boxes_to_mask, propagate

        tile = 96
        rows = []
        for img, bx in zip(images[:n], boxes[:n]):
            H, W = img.shape[:2]
            base = Image.fromarray(img).resize((tile, tile), Image.NEAREST)
            first = base.copy()
            d = ImageDraw.Draw(first)
            for x0, y0, x1, y1 in bx:
                d.rectangle([x0 * tile / W, y0 * tile / H, x1 * tile / W, y1 * tile / H], outline=(255, 0, 0))
            cells = [first]
            if bx:
                masks = propagate(boxes_to_mask(bx, (H, W), grids[-1], mp.dilation), grids, mp.pool, mp.threshold)
            else:
                masks = [np.ones(g, dtype=bool) for g in grids]  # no boxes: every token is trained
            dim = np.asarray(base, dtype=np.float32) * 0.35
            for mk in masks:
                big = Image.fromarray(np.asarray(mk, dtype=np.uint8) * 255).resize((tile, tile), Image.NEAREST)
                m = np.asarray(big)
                cells.append(Image.fromarray(np.clip(dim + (m[..., None] > 0) * 140, 0, 255).astype(np.uint8)))
            rows.append(np.concatenate([np.asarray(c) for c in cells], axis=1))
        caps = ["image + boxes"] + [f"grid {h}x{w}" for h, w in grids]
        sheet = np.concatenate(rows, axis=0)
        path = self.run_dir / "samples" / f"masks_step_{step:06d}.png"
        out = Image.new("RGB", (sheet.shape[1], sheet.shape[0] + 14), (255, 255, 255))
        out.paste(Image.fromarray(sheet), (0, 14))
        d = ImageDraw.Draw(out)
        for i, c in enumerate(caps):
            d.text((i * tile + 2, 1), c, fill=(0, 0, 0))
        out.save(path)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln] if path.exists() else []


def eval_rows(records: list[dict]) -> list[dict]:
    return [{"step": r["step"], "reward_mean": r.get("eval/reward_mean"), "reward_sem": r.get("eval/reward_sem"),
             "word_acc": r.get("eval/word_acc"), "ned": r.get("eval/ned")} for r in records if "eval/reward_mean" in r]


def kl_by_stage(records: list[dict]) -> dict[str, dict]:
    """Per update stage ("full", or VMR's "prefix" and "suffix"): how far the policy is from the
    start, as the KL per token each update measured on its batch: the number of updates, the
    last, the largest, and the range over the later half of the stage's updates (where drift shows)."""
    series: dict[str, list[float]] = {}
    for r in records:
        if "policy/kl" not in r:
            continue
        stage = next((k.split("/")[1] for k in r if k.startswith("stage/") and k.endswith("/kl")), "full")
        series.setdefault(stage, []).append(float(r["policy/kl"]))
    out = {}
    for stage, kl in series.items():
        late = kl[len(kl) // 2:]
        out[stage] = {"updates": len(kl), "last": kl[-1], "max": max(kl), "late_min": min(late), "late_max": max(late)}
    return out


def plot_rewards(run_dir: Path) -> Path:
    """plots/reward.png: the training reward per step and the held-out evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(run_dir)
    train = [(r["step"], r["reward/mean"]) for r in recs if "reward/mean" in r]
    evals = eval_rows(recs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        axes[0].plot(*zip(*train), color="0.6", lw=1, label="train (batch mean)")
    ev = [(e["step"], e["reward_mean"]) for e in evals if e["reward_mean"] is not None]
    if ev:
        axes[0].plot(*zip(*ev), "o-", color="C0", label="held-out eval")
    axes[0].set(xlabel="step", ylabel="reward", title="reward")
    axes[0].legend(loc="best", fontsize=8)
    for key, color in (("word_acc", "C1"), ("ned", "C2")):
        pts = [(e["step"], e[key]) for e in evals if e[key] is not None]
        if pts:
            axes[1].plot(*zip(*pts), "o-", color=color, label=key)
    axes[1].set(xlabel="step", title="held-out text metrics", ylim=(0, 1))
    if axes[1].lines:
        axes[1].legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = run_dir / "plots" / "reward.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: Path, summary: dict) -> dict:
    """report.json ({"eval": [{step, reward_mean, word_acc, ned}, ...], "eval_paired": the first to the last
    evaluation paired by prompt and noise seed (eval_record.paired_since_start), ...}) and report.md."""
    recs = read_metrics(run_dir)
    evals = eval_rows(recs)
    kl = kl_by_stage(recs)
    warnings = list(dict.fromkeys(r["warning"] for r in recs if "warning" in r))
    paired = paired_since_start(run_dir, evals[0]["step"], evals[-1]["step"]) if len(evals) > 1 else None
    report = {"eval": evals, "eval_paired": paired, "kl_to_start": kl, "warnings": warnings, **summary}
    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1))

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"# Run `{run_dir.name}`", ""]
    if warnings:
        lines += ["## Warnings", "", "Read these first: the run may not have trained on what you meant.", ""]
        lines += [f"- {w}" for w in warnings] + [""]
    if evals:
        first, last = evals[0], evals[-1]
        n_seeds = summary.get("eval_noise_seeds", 1)
        draws = "fixed seed" if n_seeds == 1 else f"{n_seeds} fixed noise seeds each"
        lines += [f"Held-out evaluation ({summary.get('eval_prompts', '?')} prompts, {draws}): reward "
                  f"{fmt(first['reward_mean'])} at step {first['step']} -> {fmt(last['reward_mean'])} at step "
                  f"{last['step']}; word accuracy {fmt(first['word_acc'])} -> {fmt(last['word_acc'])}.", ""]
        lines += paired_lines(paired, run_dir)
    lines += ["| step | reward | +- s.e. | word acc | NED |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {e['step']} | {fmt(e['reward_mean'])} | {fmt(e['reward_sem'])} | {fmt(e['word_acc'])} | "
              f"{fmt(e['ned'])} |" for e in evals]
    if kl:
        lines += ["", "KL to the starting policy per token, as each update measured it:", "",
                  "| stage | updates | later half: min - max | largest | last |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {st} | {v['updates']} | {v['late_min']:.3f} - {v['late_max']:.3f} | {v['max']:.3f} | "
                  f"{v['last']:.3f} |" for st, v in kl.items()]
    lines += ["", "![reward](plots/reward.png)", ""]
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    if grids:
        lines += [f"First and last sample grids: `samples/{grids[0].name}`, `samples/{grids[-1].name}`", "",
                  f"![last samples](samples/{grids[-1].name})", ""]
    for k in ("steps", "wall_s", "method"):
        if k in summary:
            lines.append(f"- {k}: {summary[k]}")
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    return report


def paired_lines(paired: dict | None, run_dir: Path | str) -> list[str]:
    """report.md's reading of the run's change against the evaluation's own error (eval_record);
    a change inside that error names a reading with half the error: four times the prompts, four
    noise seeds (on the nano model a 60-step run's gain, about 0.015, needs it: README)."""
    if paired is None:
        return []
    span = f"step {paired['from_step']} -> {paired['to_step']}"
    if "problem" in paired:
        return [f"No paired change for {span}: {paired['problem']}.", ""]
    seeds = paired["noise_seeds"]
    out = [f"Paired by prompt and noise seed ({paired['prompts']} prompts, {len(seeds)} noise "
           f"seed{'s' if len(seeds) > 1 else ''}), {span}: reward {paired['reward']:+.3f} +- "
           f"{paired['reward_se']:.3f} (s.e.), {verdict(paired['reward'], paired['reward_se'])}"]
    if paired["word_acc"] is not None:
        out[0] += (f"; word accuracy {paired['word_acc']:+.3f} +- {paired['word_acc_se']:.3f}, "
                   f"{verdict(paired['word_acc'], paired['word_acc_se'])}")
    out[0] += "."
    if len(seeds) == 1:
        out[0] += " More noise seeds per evaluation (train.eval_noise_seeds=4) shrink the error."
    if not clears(paired["reward"], paired["reward_se"]) or (
            paired["word_acc"] is not None and not clears(paired["word_acc"], paired["word_acc_se"])):
        out[0] += (f" To read the finished run on four times the prompts: python benchmarks/paired_eval.py "
                   f"{run_dir} --set train.eval_prompts={4 * paired['prompts']} (four noise seeds per end).")
    return out + [""]
