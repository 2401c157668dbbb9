"""`varrl train` end to end on a tiny random model: run directory, on-policy parity, bad input."""

import importlib.util
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tinyrun import run_args

from varrl.cli import main
from varrl.policy.load import load_policy


def tiny_args(model, run_dir, name, *extra):
    return run_args(model, run_dir, name, "train.steps=4", "train.eval_every=2", "train.save_every=2",
                    "train.eval_prompts=4", "train.micro_batch=8", "train.lr=1e-3", "train.warmup=1",
                    "train.samples_in_grid=4", "rl.method=var_rl", *extra)


def metrics(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_the_run_directory(tiny_text_dir, tmp_path):
    assert main(["train", *tiny_args(tiny_text_dir, tmp_path, "r")]) == 0
    run = tmp_path / "r"
    for f in ("config.yaml", "metrics.jsonl", "report.md", "report.json", "plots/reward.png",
              "samples/step_000000.png", "samples/step_000004.png", "checkpoints/step_00000004/model.safetensors",
              "checkpoints/step_00000004/optimizer.pt", "checkpoints/step_00000004/rng.safetensors",
              "last/config.json"):
        assert (run / f).exists(), f
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]  # keep 2
    report = json.loads((run / "report.json").read_text())
    assert [e["step"] for e in report["eval"]] == [0, 2, 4]
    assert set(report["eval"][0]) >= {"step", "reward_mean", "word_acc", "ned", "reward_sem"}
    assert all(e["reward_sem"] > 0 for e in report["eval"])  # 4 prompts of different brightness
    kl = report["kl_to_start"]  # var_rl, fine alternation over 4 steps: prefix, prefix, prefix, suffix
    assert {k: v["updates"] for k, v in kl.items()} == {"prefix": 3, "suffix": 1}
    assert "KL to the starting policy" in (run / "report.md").read_text()
    step1 = next(m for m in metrics(run) if m["step"] == 1 and "reward/mean" in m)
    for k in ("reward/mean", "reward/brightness", "policy/kl", "policy/clipfrac", "policy/ratio_mean",
              "policy/entropy", "perf/rollout_s", "perf/reward_s", "perf/update_s", "perf/images_per_s"):
        assert math.isfinite(step1[k]), k
    before = load_file(str(tiny_text_dir / "model.safetensors"))
    after = load_file(str(run / "last" / "model.safetensors"))
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 0  # it learned something
    load_policy(run)  # a run dir loads as a model (its last/)
    if importlib.util.find_spec("tensorboard") is not None:  # installed with the test extra
        assert list((run / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("mode", ["plain", "sampling"])
def test_ratio_is_exactly_one_at_the_first_update(tiny_text_dir, tmp_path, mode):
    args = tiny_args(tiny_text_dir, tmp_path, mode, "train.steps=1", "train.epochs=2", "sampler.cfg=2.0",
                     f"sampler.logprob_mode={mode}", "train.micro_batch=3")
    assert main(["train", *args]) == 0
    m = next(m for m in metrics(tmp_path / mode) if "policy/ratio_mean" in m)
    assert m["policy/ratio_dev_first"] == 0.0
    assert m["policy/ratio_mean"] != 1.0  # the second epoch moved off-policy
    # Sampling-time log-probs agree with the teacher-forced re-score up to float rounding.
    assert m["policy/logprob_drift"] < 1e-4


def test_resume_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a varrl train run directory" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(tiny_text_dir, tmp_path, capsys):
    args = tiny_args(tiny_text_dir, tmp_path, "twice", "train.steps=1")
    assert main(["train", *args]) == 0
    assert main(["train", *args]) == 2
    assert "--resume" in capsys.readouterr().err


def test_broken_prompts_file_names_file_and_line(tiny_text_dir, tmp_path, capsys):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "the text \\"OPEN\\""}\n{"prompt": "a sign that says \\"SHUT\\"",}\n')
    assert main(["train", *tiny_args(tiny_text_dir, tmp_path, "p", f"data.prompts_file={f}")]) == 2
    err = capsys.readouterr().err
    assert f"{f}:2" in err and "not valid JSON" in err


def test_prompt_too_long_for_the_model_is_caught_before_training(tiny_text_dir, tmp_path, capsys):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "ok \\"A\\""}\n' + json.dumps({"prompt": "x" * 300}) + "\n")
    assert main(["train", *tiny_args(tiny_text_dir, tmp_path, "long", f"data.prompts_file={f}")]) == 2
    assert f"{f}:2" in capsys.readouterr().err


def test_nan_reward_group_is_skipped_and_counted(tiny_text_dir, tmp_path):
    # text_ocr is not applicable (NaN) to a prompt with no quoted words: that group is skipped.
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "the text \\"OPEN\\" in red"}\n{"prompt": "a quiet empty field"}\n')
    args = tiny_args(tiny_text_dir, tmp_path, "nan", f"data.prompts_file={f}", f"data.eval_prompts_file={f}",
                     "reward.weights={text_ocr: 1.0}", "reward.text_ocr.workers=0", "train.steps=2")
    assert main(["train", *args]) == 0
    steps = [m for m in metrics(tmp_path / "nan") if "reward/mean" in m]
    assert [m["reward/skipped_groups"] for m in steps] == [1, 1]
    assert all(math.isfinite(m["reward/mean"]) and math.isfinite(m["policy/loss"]) for m in steps)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tiny_text_dir, tmp_path, capsys):
    # An absurd learning rate blows the weights up after the first update; the next loss is not finite.
    args = tiny_args(tiny_text_dir, tmp_path, "boom", "train.lr=1e30", "train.grad_clip=0", "train.save_every=1",
                     "train.steps=6", "train.eval_every=0", "rl.kl_beta=0")
    assert main(["train", *args]) == 1
    err = capsys.readouterr().err
    assert ("not finite" in err or "non-finite" in err) and "last good checkpoint" in err
    ckpts = sorted(p.name for p in (tmp_path / "boom" / "checkpoints").iterdir())
    assert ckpts and all(p.startswith("step_") for p in ckpts)
    sd = load_file(str(tmp_path / "boom" / "checkpoints" / ckpts[-1] / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in sd.values())


def test_update_refuses_a_nan_loss(tiny_text_dir):
    from varrl.policy.sampler import SamplerConfig
    from varrl.trainer.config import RlConfig, TrainConfig
    from varrl.trainer.dist import DistInfo
    from varrl.trainer.update import NonFiniteLossError, UpdatePlan, policy_update

    policy = load_policy(tiny_text_dir)
    traj = policy.rollout(["a"], n=2, sampler=SamplerConfig(cfg=0), generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in policy.parameters()]
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    plan = UpdatePlan(steps=[0, 1, 2])
    with pytest.raises(NonFiniteLossError, match="not finite"):
        policy_update(policy, None, traj, torch.tensor([float("nan"), 1.0]), plan, RlConfig(kl_beta=0),
                      TrainConfig(), opt, DistInfo())
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))  # nothing was applied


def test_evaluations_are_paired_across_seeds(tiny_text_dir, tmp_path):
    # The held-out prompts and noise follow train.eval_seed, not run.seed: two seeds of one config
    # evaluate the same start identically; eval_seed=null goes back to run.seed.
    evals = {}
    for name, extra in (("s1", ["run.seed=1"]), ("s2", ["run.seed=2"]), ("s3", ["run.seed=2", "train.eval_seed=null"])):
        assert main(["train", *tiny_args(tiny_text_dir, tmp_path, name, "train.steps=1", *extra)]) == 0
        evals[name] = json.loads((tmp_path / name / "report.json").read_text())["eval"][0]["reward_mean"]
    assert evals["s1"] == evals["s2"]
    assert evals["s3"] != evals["s2"]


def test_trainable_freezes_the_other_parameters(tiny_text_dir, tmp_path):
    assert main(["train", *tiny_args(tiny_text_dir, tmp_path, "b", "train.steps=2", "train.trainable=bias$")]) == 0
    before = load_file(str(tiny_text_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "b" / "last" / "model.safetensors"))
    moved = {k for k in before if (before[k] - after[k]).abs().max().item() > 0}
    assert moved and all(k.endswith("bias") for k in moved), sorted(moved)
    # Resume restores an optimizer over the same parameters.
    assert main(["train", "--resume", str(tmp_path / "b"), "train.steps=3"]) == 0


def test_trainable_that_matches_nothing_is_a_config_error(tiny_text_dir, tmp_path, capsys):
    assert main(["train", *tiny_args(tiny_text_dir, tmp_path, "n", "train.trainable=no_such_param")]) == 2
    err = capsys.readouterr().err
    assert "train.trainable" in err and "matches no parameter" in err
    assert main(["train", *tiny_args(tiny_text_dir, tmp_path, "n2", "train.trainable=blocks(")]) == 2
    assert "not a regular expression" in capsys.readouterr().err


def test_standard_error_by_hand():
    from varrl.trainer.evaluate import standard_error

    # values 1, 2, 3, 6: mean 3, squared deviations 4+1+0+9 = 14, sample var 14/3, s.e. sqrt(14/3)/2
    assert standard_error([1.0, 2.0, float("nan"), 3.0, 6.0]) == pytest.approx(math.sqrt(14 / 3) / 2)
    assert standard_error([2.0, float("nan")]) is None  # one finite value: no spread to report



def test_kl_by_stage_by_hand():
    from varrl.trainer.report import kl_by_stage

    recs = [{"step": 0, "eval/reward_mean": 1.0}]  # an evaluation: no update, no KL
    recs += [{"step": i + 1, "policy/kl": kl, "stage/prefix/kl": kl} for i, kl in enumerate([0.0, 0.4, 0.2, 0.3])]
    recs += [{"step": 5, "policy/kl": 0.05, "stage/suffix/kl": 0.05}]
    assert kl_by_stage(recs) == {
        "prefix": {"updates": 4, "last": 0.3, "max": 0.4, "late_min": 0.2, "late_max": 0.3},  # later half: 0.2, 0.3
        "suffix": {"updates": 1, "last": 0.05, "max": 0.05, "late_min": 0.05, "late_max": 0.05}}
    assert kl_by_stage([{"step": 1, "policy/kl": 0.1}])["full"]["updates"] == 1  # plain GRPO


def test_wall_time_counts_every_session_of_a_run(tiny_text_dir, tmp_path):
    assert main(["train", *tiny_args(tiny_text_dir, tmp_path, "w", "train.steps=2")]) == 0
    run = tmp_path / "w"
    first = json.loads((run / "report.json").read_text())["wall_s"]
    at_ckpt = json.loads((run / "checkpoints" / "step_00000002" / "state.json").read_text())["wall_s"]
    assert 0 < at_ckpt <= first
    # Resuming the finished run only rewrites its report: the recorded time must survive it.
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "report.json").read_text())["wall_s"] >= round(at_ckpt, 1)
