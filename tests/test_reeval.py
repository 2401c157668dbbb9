"""evaluate_at_seeds: the evaluation that benchmarks/eval_noise.py and paired_eval.py repeat at
several noise seeds must be the run's own (same prompts, reward and noise at the run's eval seed)."""

from __future__ import annotations

import json

import pytest
from tinyrun import run_args

from varrl.cli import main
from varrl.config import load_config
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.reeval import evaluate_at_seeds


def test_noise_seed_zero_reproduces_the_runs_step_zero(tiny_text_dir, tmp_path):
    args = run_args(tiny_text_dir, tmp_path, "r", "train.steps=1", "train.eval_every=0", "train.micro_batch=8",
                    "train.eval_prompts=3")
    assert main(["train", *args]) == 0
    rows = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    step0 = next(r for r in rows if r["step"] == 0 and "eval/reward_mean" in r)
    assert step0["perf/eval_s"] > 0  # the evaluation's cost is logged beside it

    cfg = load_config(TrainRunConfig, None, args, apply_method_preset)
    seen = []
    results, records = evaluate_at_seeds(cfg, [0, 1, 0], lambda s, r: seen.append(s))
    assert seen == [0, 1, 0] and len(records) == 3
    means = [r.metrics["reward_mean"] for r in results]
    assert means[0] == pytest.approx(step0["eval/reward_mean"], abs=1e-6)  # the run's own evaluation
    assert means[2] == means[0]  # a noise seed is a fixed draw
    assert means[1] != means[0]  # another seed is other noise on the same prompts
    assert results[0].scores_P.shape == (3,)


def test_words_read_right_per_prompt_add_up_to_the_word_accuracy():
    # The shipped nano model spells: on these 12 prompts some words are read right and some not.
    cfg = load_config(TrainRunConfig, None, ["train.eval_prompts=12", "train.threads=1", "reward.text_ocr.workers=0"],
                      apply_method_preset)
    (res,), records = evaluate_at_seeds(cfg, [0])
    n_words = [len(r.words) for r in records]
    right = res.words_right_P
    assert right.shape == (12,) and all(0 <= w <= n for w, n in zip(right, n_words))
    assert 0 < res.metrics["word_acc"] < 1
    assert res.metrics["word_acc"] == pytest.approx(right.sum() / sum(n_words))
