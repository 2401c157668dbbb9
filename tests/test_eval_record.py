"""Evaluations at several noise seeds and the report's paired change, by hand and end to end."""

import json
import math

import numpy as np
import pytest
from tinyrun import run_args

from varrl.cli import main
from varrl.data.prompts import PromptRecord
from varrl.trainer.eval_record import load_readings, paired_since_start, save_readings, verdict
from varrl.trainer.evaluate import EvalResult, pooled_metrics
from varrl.trainer.report import paired_lines

nan = float("nan")


def result(scores, words=None, **metrics):
    return EvalResult(metrics, np.zeros((len(scores), 2, 2, 3), np.uint8), [""] * len(scores), None,
                      np.asarray(scores, np.float64), None if words is None else np.asarray(words, np.float64))


def records(*prompts, words=1):
    return [PromptRecord(p, tuple(f"w{i}" for i in range(words))) for p in prompts]


def test_pooled_metrics_average_the_seeds_and_take_the_error_over_prompt_means():
    a = result([1.0, 3.0, nan], reward_mean=2.0, word_acc=0.5, ned=None)
    b = result([3.0, 1.0, 2.0], reward_mean=2.0, word_acc=1.0, ned=None)
    m = pooled_metrics([a, b])
    assert m["reward_mean"] == 2.0 and m["word_acc"] == 0.75 and m["ned"] is None
    # Per-prompt means over the seeds: [2, 2, 2] (the NaN draw left out): no spread between prompts.
    assert m["reward_sem"] == 0.0
    assert pooled_metrics([a]) == a.metrics  # one seed: the evaluation as it was


def test_paired_since_start_pairs_the_shared_seeds(tmp_path):
    recs = records("a", "b", "c")
    save_readings(tmp_path, 0, [result([1.0, 2, 3], [1, 0, 1]), result([0.0, 0, 0], [0, 0, 0])], recs, [0, 1])
    save_readings(tmp_path, 5, [result([2.0, 2, 5], [1, 1, 1])], recs, [0])  # a resume went down to 1 seed
    got = paired_since_start(tmp_path, 0, 5)
    # Seed 0 only: d = [1, 0, 2] -> +1 +- 1/sqrt(3); words d = [0, 1, 0] over 3 words -> 1/3.
    assert got["noise_seeds"] == [0] and got["prompts"] == 3
    assert got["reward"] == pytest.approx(1.0) and got["reward_se"] == pytest.approx(1 / math.sqrt(3))
    assert got["word_acc"] == pytest.approx(1 / 3)
    assert load_readings(tmp_path, 5)["prompts"].tolist() == ["a", "b", "c"]
    assert paired_since_start(tmp_path, 0, 7) is None  # no readings at step 7 (a run from before them)
    (tmp_path / "evals" / "step_000009.npz").write_bytes(b"not a zip")  # damaged by hand: as if absent
    assert paired_since_start(tmp_path, 0, 9) is None


def test_paired_since_start_refuses_other_prompts(tmp_path):
    save_readings(tmp_path, 0, [result([1.0, 2])], records("a", "b"), [0])
    save_readings(tmp_path, 3, [result([1.0, 2])], records("a", "z"), [0])
    got = paired_since_start(tmp_path, 0, 3)
    assert "prompts differ" in got["problem"]
    assert "No paired change" in paired_lines(got, tmp_path)[0]


def test_verdict_reads_the_change_against_twice_its_error():
    assert verdict(0.02, 0.011).startswith("within")
    assert verdict(0.03, 0.011) == "a gain beyond two standard errors"
    assert verdict(-0.03, 0.011) == "a loss beyond two standard errors"


def test_a_change_inside_the_error_names_the_reading_that_can_tell_it():
    base = {"from_step": 0, "to_step": 60, "prompts": 128, "noise_seeds": [0], "word_acc": 0.03,
            "word_acc_se": 0.01}
    small = paired_lines({**base, "reward": 0.01, "reward_se": 0.011}, "runs/x")[0]
    assert "paired_eval.py runs/x --set train.eval_prompts=512" in small and "eval_noise_seeds=4" in small
    clear = paired_lines({**base, "reward": 0.03, "reward_se": 0.011, "noise_seeds": [0, 1]}, "runs/x")[0]
    assert "paired_eval" not in clear and "eval_noise_seeds" not in clear
    words_small = paired_lines({**base, "reward": 0.03, "reward_se": 0.011, "word_acc_se": 0.02}, "runs/x")[0]
    assert "paired_eval.py" in words_small  # either reading inside its error is enough to point further
    fewer = paired_lines({**base, "prompts": 32, "reward": 0.01, "reward_se": 0.011}, "runs/x")[0]
    assert "train.eval_prompts=128" in fewer  # four times the run's own prompts: half the error


def test_a_run_reads_several_noise_seeds_and_reports_the_paired_change(tiny_text_dir, tmp_path):
    common = ("train.steps=2", "train.eval_prompts=4", "train.micro_batch=8", "train.save_every=2",
              "train.samples_in_grid=4", "train.group_size=2", "train.lr=1e-2", "train.warmup=0")
    assert main(["train", *run_args(tiny_text_dir, tmp_path, "one", *common)]) == 0
    assert main(["train", *run_args(tiny_text_dir, tmp_path, "two", *common, "train.eval_noise_seeds=2")]) == 0
    one, two = load_readings(tmp_path / "one", 0), load_readings(tmp_path / "two", 0)
    assert one["scores_SP"].shape == (1, 4) and two["scores_SP"].shape == (2, 4)
    # The first draw is the one-seed evaluation's draw; the second is another.
    assert np.array_equal(two["scores_SP"][0], one["scores_SP"][0])
    assert not np.array_equal(two["scores_SP"][1], two["scores_SP"][0])
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["eval"][0]["reward_mean"] == pytest.approx(np.nanmean(two["scores_SP"]))
    paired = report["eval_paired"]
    assert paired["noise_seeds"] == [0, 1] and (paired["from_step"], paired["to_step"]) == (0, 2)
    ends = load_readings(tmp_path / "two", 2)["scores_SP"]
    assert paired["reward"] != 0 and paired["reward"] == pytest.approx(np.mean(ends - two["scores_SP"]))
    md = (tmp_path / "two" / "report.md").read_text()
    assert "Paired by prompt and noise seed (4 prompts, 2 noise seeds), step 0 -> 2: reward" in md
    assert "2 fixed noise seeds each" in md
    assert "train.eval_noise_seeds=4" in (tmp_path / "one" / "report.md").read_text()  # one seed: how to tighten
