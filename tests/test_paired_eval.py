"""benchmarks/paired_eval.py --prompts both: the held-out and seen readings of the same runs, then the
seen change minus the held-out change run by run (the README's "learns what it saw" figure)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tinyrun import run_args

from varrl.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_eval.py"


def load_script():
    spec = importlib.util.spec_from_file_location("paired_eval", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seen_minus_heldout_is_the_difference_run_by_run(capsys):
    # Worked by hand: reward differences 0.03 - (-0.01) = +0.04 and 0.01 - 0.02 = -0.01, mean +0.015,
    # sample std 0.0354, s.e. 0.0354 / sqrt(2) = 0.025; word accuracy +0.02 and -0.01, mean +0.005.
    load_script().seen_minus_heldout([Path("a/seed0"), Path("a/seed1")], ([0.03, 0.01], [0.02, 0.0]),
                                     ([-0.01, 0.02], [0.0, 0.01]))
    out = capsys.readouterr().out
    assert "| a/seed0 | +0.040 | +0.020 |" in out and "| a/seed1 | -0.010 | -0.010 |" in out
    assert "reward +0.015 +- 0.025 (1 of 2 positive), word accuracy +0.005 +- 0.015 (1 of 2 positive)" in out


def test_the_evaluations_own_error_of_the_mean_change():
    # Worked by hand: two runs, one noise seed, three prompts. Reward changes per prompt: run A
    # (0.1, 0, 0.2), run B (0.3, -0.1, 0); averaged over the runs (0.2, -0.05, 0.1), mean 0.0833,
    # s.e. over prompts sqrt(0.031667 / (3 * 2)) = 0.0726. Words read right: A (0, 1, 1), B (-1, 0, 1),
    # averaged (-0.5, 0.5, 1) over (1, 2, 1) target words: ratio 1 / 4 = 0.25, residuals (-0.75, 0,
    # 0.75), s.e. sqrt(1.125 / 6) * 3 / 4 = 0.3248.
    start_r, start_w, words = np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 1.0, 0.0]]), np.array([1.0, 2.0, 1.0])
    a = (start_r, np.array([[1.1, 2.0, 3.2]]), start_w, np.array([[1.0, 2.0, 1.0]]), words)
    b = (start_r, np.array([[1.3, 1.9, 3.0]]), start_w, np.array([[0.0, 1.0, 1.0]]), words)
    se_r, se_w = load_script().pooled_eval_se([a, b])
    assert se_r == pytest.approx(0.072648, abs=1e-6) and se_w == pytest.approx(0.324760, abs=1e-6)


def test_runs_that_agree_are_still_held_to_the_evaluations_error(capsys):
    # Three runs with the same change have no spread over runs (s.e. 0): the reward's +0.03 is not a
    # gain against an evaluation s.e. of 0.02 (bar 0.04); the words' +0.01 is, against 0.004 (bar 0.008).
    load_script().summarize([0.03] * 3, [0.01] * 3, [1.70, 1.71, 1.70], (0.02, 0.004), None)
    out = capsys.readouterr().out
    assert "the evaluation's s.e. 0.020" in out
    assert "reward: the change is not a gain beyond 2 s.e. over runs (0.000), 2 s.e. of the evaluation (0.040)" in out
    assert "word accuracy: a gain beyond 2 s.e. over runs (0.000) and of the evaluation (0.008)" in out


def test_a_cell_against_the_reference_seed_by_seed():
    # Worked by hand: cell b's ends minus reference a's, one noise seed, three prompts: rewards
    # (1.1, 2.3, 2.9) - (1, 2, 3) = (0.1, 0.3, -0.1), mean 0.1, s.e. sqrt(0.08 / 6) = 0.1155; words
    # (1, 2, 1) - (1, 1, 0) = (0, 1, 1) over (1, 2, 1) target words: 2 / 4 = 0.5, residuals (-0.5, 0,
    # 0.5), s.e. sqrt(0.5 / 6) * 3 / 4 = 0.2165.
    module = load_script()
    words, start = np.array([1.0, 2.0, 1.0]), np.zeros((1, 3))
    ref = (start, np.array([[1.0, 2.0, 3.0]]), start, np.array([[1.0, 1.0, 0.0]]), words)
    cell = (start, np.array([[1.1, 2.3, 2.9]]), start, np.array([[1.0, 2.0, 1.0]]), words)
    se_r, se_w = module.difference_eval_se([cell], [ref])
    assert se_r == pytest.approx(0.115470, abs=1e-6) and se_w == pytest.approx(0.216506, abs=1e-6)


def test_against_reference_pairs_runs_of_one_name(capsys, tmp_path):
    # Changes: a/seed0 0.00, a/seed1 -0.01, b/seed1 +0.03, b/seed0 +0.02 (given in another order):
    # b - a by seed = +0.02, +0.04, mean +0.03, s.e. 0.01; words +0.01 and -0.01, mean 0.
    runs = [tmp_path / "a" / "seed0", tmp_path / "a" / "seed1", tmp_path / "b" / "seed1", tmp_path / "b" / "seed0"]
    rng = np.random.default_rng(0)
    arrays = [(z, z + rng.normal(size=(1, 4)), z, z, np.ones(4)) for z in [np.zeros((1, 4))] * 4]
    load_script().against_reference(runs, ([0.0, -0.01, 0.03, 0.02], [0.0, 0.0, -0.01, 0.01], arrays), "a")
    out = capsys.readouterr().out
    assert "| b (2 seeds) | +0.030 (0.010; " in out and "| 2 of 2 | +0.000 (0.010; " in out
    assert "| a (" not in out  # the reference is not compared with itself


def changes(table: str) -> dict[str, float]:
    """run label -> paired reward change, from one of the script's tables."""
    row = r"^\| (\S+) \| -?[\d.]+ -> -?[\d.]+ \| ([+-][\d.]+) \("
    return {m[1]: float(m[2]) for m in re.finditer(row, table, re.M)}


def test_both_readings_of_two_tiny_runs(tiny_text_dir, tmp_path):
    runs = []
    for seed in range(2):
        args = run_args(tiny_text_dir, tmp_path / "cell", f"seed{seed}", f"run.seed={seed}", "train.steps=2",
                        "train.eval_every=0", "train.lr=1e-3")
        assert main(["train", *args]) == 0
        runs.append(tmp_path / "cell" / f"seed{seed}")
    # Trained on brightness (fast); read with the OCR reward, in this process, as the script needs words.
    # The tiny model writes no letters, so its changes are 0: this checks that both readings and their
    # difference come out for every run; the arithmetic is the hand-worked test above.
    read = [sys.executable, str(SCRIPT), *map(str, runs), "--noise-seeds", "0", "--cache", str(tmp_path / "cache"),
            "--set", "reward.weights={text_ocr: 1.0}", "reward.text_ocr.workers=0", "train.threads=1"]
    proc = subprocess.run([*read, "--prompts", "both"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    held_part, rest = out.split("seen (each run's first training prompts) prompts", 1)
    seen_part, diff_part = rest.split("| run | seen minus held-out", 1)
    held, seen = changes(held_part), changes(seen_part)
    assert set(held) == set(seen) == {"seed0", "seed1"}
    rows = dict(re.findall(r"^\| cell/(seed\d) \| ([+-][\d.]+) \|", diff_part, re.M))
    for run in ("seed0", "seed1"):
        assert float(rows[run]) == pytest.approx(seen[run] - held[run], abs=1.5e-3)
    assert "seen minus held-out over 2 runs" in diff_part
    # Read again: the start and both runs come from the cache, with the same table.
    again = subprocess.run(read, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("1 of 1 noise seeds from the cache") == 3, again.stderr
    assert again.stdout.split("\n\n")[1] == held_part.split("\n\n")[1]  # the held-out table, row for row
    # A reference that names no folder of the runs is refused before any evaluation.
    bad = subprocess.run([sys.executable, str(SCRIPT), *map(str, runs), "--reference", "var_rl"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "--reference var_rl: no run given lies in a folder of that name" in bad.stderr


def test_a_run_that_is_not_finished_is_named_before_any_evaluation(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope"), "--prompts", "both"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "not a finished run directory" in proc.stderr


def test_a_readings_key_follows_content_not_paths(tiny_text_dir, tmp_path):
    import shutil

    sys.path.insert(0, str(SCRIPT.parent))
    from eval_cache import cache_key

    from varrl.config import load_config
    from varrl.trainer.config import TrainRunConfig, apply_method_preset

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_text_dir, a)
    shutil.copytree(tiny_text_dir, b)

    def key(model, *extra, seed=0):
        cfg = load_config(TrainRunConfig, None, [f"policy.path={model}", *extra], apply_method_preset)
        return cache_key(cfg, seed)

    base = key(a)
    assert key(b, "run.name=other", "train.lr=0.5", "train.eval_seed=0") == base  # same bytes; training-only keys
    assert key(a, seed=1) != base and key(a, "train.threads=3") != base and key(a, "sampler.top_k=3") != base
    weights = b / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert key(b) != base  # one bit of the weights
