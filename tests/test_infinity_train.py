"""`varrl train` on a tiny random Infinity (transformer + BSQ tokenizer + T5 in the released layouts)
with the OCR reward: the shipped config runs end to end, the ratio is exactly 1 at the first
update, a run resumes bit-identically, and two processes under torchrun train together."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tinyinfinity import write_tiny_infinity
from tinyinfinity_vae import write_tiny_bsq, write_tiny_t5

from varrl.cli import main
from varrl.config import load_config
from varrl.models.infinity.schedules import infinity_schedule
from varrl.policy.load import load_policy
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.loop import resolve_split

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyinfinity_train")
    return write_tiny_infinity(root, ".safetensors"), write_tiny_bsq(root), write_tiny_t5(root / "flan-t5-tiny")


def train_args(files, run_dir, name, *extra):
    """configs/infinity_125m_text.yaml on the tiny files, at toy sizes (64 px images)."""
    model, vae, t5 = files
    return ["train", "--config", str(CONFIGS / "infinity_125m_text.yaml"), f"policy.path={model}",
            f"policy.vae={vae}", f"policy.text_encoder={t5}", "policy.dtype=float32", "policy.device=cpu",
            f"run.dir={run_dir}", f"run.name={name}", "reward.weights={text_ocr: 1.0, brightness: 1.0}",
            "train.prompts_per_step=2", "train.group_size=2", "train.steps=2", "train.eval_every=0",
            "train.save_every=2", "train.eval_prompts=2", "train.micro_batch=4", "train.lr=1e-3", "train.warmup=1",
            "train.samples_in_grid=2", "rl.vmr.m=3", *extra]


def rows(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name,steps,m", [("infinity_2b_text", 13, 7), ("infinity_125m_text", 7, 3)])
def test_shipped_infinity_configs_load(name, steps, m):
    cfg = load_config(TrainRunConfig, CONFIGS / f"{name}.yaml", [], apply_method_preset)
    sched = infinity_schedule(cfg.policy.schedule, cfg.policy.aspect_ratio)
    assert sched.num_steps == steps and resolve_split(cfg.rl.vmr.m, sched) == m
    assert cfg.train.group_size == 16 and cfg.train.prompts_per_step == 16 and cfg.train.lr == 1e-5
    assert cfg.sampler.cfg == 5.0 and cfg.sampler.top_p == 0.9 and cfg.rl.vmr.k == 2


def test_rl_end_to_end_with_the_ocr_reward(files, tmp_path):
    assert main(train_args(files, tmp_path, "e2e", "train.grad_checkpointing=true")) == 0
    run = tmp_path / "e2e"
    step = next(m for m in rows(run) if m["step"] == 1 and "reward/mean" in m)
    for k in ("reward/mean", "reward/text_ocr", "reward/brightness", "policy/kl", "policy/ratio_mean",
              "perf/images_per_s"):
        assert math.isfinite(step[k]), k
    assert step["policy/ratio_dev_first"] == 0.0 and step["policy/grad_norm"] > 0
    report = json.loads((run / "report.json").read_text())
    assert [e["step"] for e in report["eval"]] == [0, 2]
    model, vae, t5 = files
    before = load_policy(model, vae=vae, text_encoder=t5, schedule="0.06M").model.state_dict()
    after = load_policy(run).model.state_dict()  # the run's last/ is an Infinity model directory
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 0


@pytest.mark.parametrize("mode,layer", [("plain", 0), ("sampling", -2)])
def test_ratio_is_exactly_one_at_the_first_update(files, tmp_path, mode, layer):
    args = train_args(files, tmp_path, mode, "train.steps=1", "train.epochs=2", f"sampler.logprob_mode={mode}",
                      f"sampler.cfg_insertion_layer={layer}", "rl.method=grpo", "train.micro_batch=2")
    assert main(args) == 0
    m = next(r for r in rows(tmp_path / mode) if "policy/ratio_mean" in r)
    assert m["policy/ratio_dev_first"] == 0.0
    assert m["policy/ratio_mean"] != 1.0  # the second epoch moved off-policy
    assert m["policy/logprob_drift"] <= 1e-4  # sampled vs re-scored in micro-batches of 2


def test_resume_continues_exactly(files, tmp_path):
    def step_rows(run):
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows(run)
                if r["step"] == 2 and "reward/mean" in r]

    extra = ("train.save_every=1", "rl.method=grpo")
    assert main(train_args(files, tmp_path, "full", *extra)) == 0
    assert main(train_args(files, tmp_path, "part", *extra, "train.steps=1")) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "train.steps=2"]) == 0
    assert step_rows(tmp_path / "part") == step_rows(tmp_path / "full") != []
    a = load_policy(tmp_path / "full").model.state_dict()
    b = load_policy(tmp_path / "part").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_train_together(files, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "varrl",
           *train_args(files, tmp_path, "dp", "train.steps=2", "train.save_every=1", "rl.method=grpo")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [r for r in rows(tmp_path / "dp") if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    state = json.loads((tmp_path / "dp" / "checkpoints" / "step_00000002" / "state.json").read_text())
    assert state["world"] == 2
