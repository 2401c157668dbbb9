"""Each held-out evaluation's readings per prompt and noise seed, kept in the run folder
(`evals/step_XXXXXX.npz`), so that the report reads what the run changed paired by prompt and noise
seed, with its standard error, instead of setting two means side by side that each carry their own
sampling luck (a lucky step-0 draw reads as a loss in an unpaired comparison)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from varrl.data.prompts import PromptRecord
from varrl.eval.paired import paired_change
from varrl.fileio import atomic_write, read_npz
from varrl.trainer.evaluate import EvalResult


def readings_path(run_dir: Path, step: int) -> Path:
    return run_dir / "evals" / f"step_{step:06d}.npz"


def save_readings(run_dir: Path, step: int, results: list[EvalResult], records: list[PromptRecord],
                  noise_seeds: list[int]) -> Path:
    """Write one evaluation's per-prompt rewards (and target words read right, when the reward reads
    text), one row per noise seed, with the prompts and seeds they belong to."""
    arrays = {"scores_SP": np.stack([r.scores_P for r in results]), "noise_seeds": np.asarray(noise_seeds),
              "prompts": np.asarray([r.prompt for r in records], dtype=str),
              "n_words_P": np.asarray([len(r.words) for r in records], dtype=np.float64)}
    if all(r.words_right_P is not None for r in results):
        arrays["words_right_SP"] = np.stack([r.words_right_P for r in results])
    path = readings_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def load_readings(run_dir: Path, step: int) -> dict[str, np.ndarray] | None:
    """One evaluation's readings, or None where the run has none (runs from before this file, a file
    damaged by hand: the report then gives the unpaired figures only)."""
    return read_npz(readings_path(run_dir, step))


def paired_since_start(run_dir: Path, first: int, last: int) -> dict | None:
    """The change from the evaluation at step `first` to the one at `last`, paired by prompt over the
    noise seeds both read (varrl.eval.paired): {"from_step", "to_step", "noise_seeds", "prompts",
    "reward", "reward_se", "word_acc", "word_acc_se"} (word accuracy None where the reward reads no
    text), {"from_step", "to_step", "problem"} where the two cannot be paired, None without readings."""
    a, b = load_readings(run_dir, first), load_readings(run_dir, last)
    if a is None or b is None:
        return None
    out: dict = {"from_step": first, "to_step": last}
    if a["prompts"].shape != b["prompts"].shape or not (a["prompts"] == b["prompts"]).all():
        return {**out, "problem": "the held-out prompts differ between the two evaluations (train.eval_seed or "
                                  "train.eval_prompts changed on --resume), so they cannot be paired"}
    row_a, row_b = ({int(s): i for i, s in enumerate(r["noise_seeds"])} for r in (a, b))
    seeds = [s for s in row_a if s in row_b]
    if not seeds:
        return {**out, "problem": "the two evaluations share no noise seed (train.eval_seed changed on --resume)"}
    rows_a, rows_b = [row_a[s] for s in seeds], [row_b[s] for s in seeds]
    try:
        change, se, n = paired_change(a["scores_SP"][rows_a], b["scores_SP"][rows_b])
    except ValueError:  # fewer than 2 prompts with a reward on both sides: no error to read it against
        return {**out, "problem": "fewer than 2 prompts have a reward at both evaluations"}
    out.update(noise_seeds=seeds, prompts=n, reward=change, reward_se=se, word_acc=None, word_acc_se=None)
    if "words_right_SP" in a and "words_right_SP" in b:
        try:
            out["word_acc"], out["word_acc_se"], _ = paired_change(a["words_right_SP"][rows_a],
                                                                   b["words_right_SP"][rows_b], a["n_words_P"])
        except ValueError:
            pass  # too few prompts read on both sides: the reward's change stands alone
    return out


def clears(change: float, se: float) -> bool:
    """Whether a paired change lies beyond twice its standard error."""
    return abs(change) > 2 * se


def verdict(change: float, se: float) -> str:
    """How a paired change reads against twice its standard error."""
    if not clears(change, se):
        return "within two standard errors: not a change this evaluation can tell from none"
    return f"a {'gain' if change > 0 else 'loss'} beyond two standard errors"
