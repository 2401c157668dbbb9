"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tinyrun
from safetensors.torch import load_file
from tinymodel import build_tiny, write_model_dir


def run_args(model, run_dir, name, extra=()):
    return [sys.executable, "-m", "varrl", "train",
            *tinyrun.run_args(model, run_dir, name, "train.steps=12", "train.eval_every=4", "train.save_every=1",
                              "train.eval_prompts=4", "train.micro_batch=4", "train.lr=3e-3", "train.warmup=2",
                              "train.threads=1", "sampler.cfg=1.5", "sampler.top_k=20", "rl.method=var_rl", *extra)]


def without_perf(path):
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if not k.startswith("perf/")})
    return out


LORA = ("train.lora.rank=2", "train.lora.dropout=0.1", "rl.kl_beta=0.05")
"""adapters with dropout (torch's RNG in the update) and a KL term (the adapters-off reference)"""


# 0: as soon as config.yaml is written; "eval0": once the step-0 evaluation is logged, before any checkpoint
@pytest.mark.parametrize("kill_after,extra", [
    (0, ()),
    pytest.param("eval0", (), marks=pytest.mark.slow),
    pytest.param(3, (), marks=pytest.mark.slow),
    pytest.param(7, (), marks=pytest.mark.slow),
    pytest.param(5, LORA, marks=pytest.mark.slow),
], ids=["0", "eval0", "3", "7", "lora-5"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, kill_after, extra):
    check_kill_and_resume(tmp_path, kill_after, extra)


# The credit-assignment levers: each knob on, killed mid-run, resumed.
# (One lever in the default test run; all of them with -m slow, as CI runs them.)
@pytest.mark.parametrize("extra", [
    pytest.param(["rl.vmr.splits=[1, 2]"], marks=pytest.mark.slow),
    pytest.param(["rl.method=grpo", "rl.region_credit.enabled=true", "reward.weights={text_ocr: 1.0}",
                  "reward.text_ocr.workers=0"], marks=pytest.mark.slow),
    pytest.param(["rl.method=grpo", "rl.region_credit.enabled=true", "rl.region_credit.unit=letter",
                  "rl.region_credit.outside=mask", "reward.weights={text_ocr: 1.0}", "reward.text_ocr.workers=0"],
                 marks=pytest.mark.slow),
    ["rl.adv_norm=loo"],
    pytest.param(["rl.method=grpo", "rl.last_grid=2"], marks=pytest.mark.slow),
    pytest.param(["rl.method=grpo", "rl.adv_std_floor=0.5"], marks=pytest.mark.slow),
    pytest.param(["rl.method=grpo", "rl.last_grid=2", "sampler.tail_after=2", "sampler.tail_temperature=0.05"],
                 marks=pytest.mark.slow),
], ids=["per_scale", "region_credit", "region_letter", "loo", "last_grid", "std_floor", "cold_tail"])
def test_resume_is_bit_identical_with_each_lever(tmp_path, extra):
    check_kill_and_resume(tmp_path, 3, extra)


def check_kill_and_resume(tmp_path, kill_after, extra=()):
    model = tmp_path / "model"
    write_model_dir(model, *build_tiny(model_kwargs=dict(max_text_len=128)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(run_args(model, tmp_path, "full", extra), env=env, check=True, capture_output=True)

    proc = subprocess.Popen(run_args(model, tmp_path, "killed", extra), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    killed = tmp_path / "killed"
    ckpt = {0: killed / "config.yaml", "eval0": killed / "metrics.jsonl"}.get(kill_after)
    ckpt = ckpt or killed / "checkpoints" / f"step_{kill_after:08d}"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    if kill_after == 0:
        assert not (killed / "metrics.jsonl").exists()  # killed before its first metrics line
    if kill_after == "eval0":  # its step-0 evaluation is logged, and is done again on resume: once in the log
        assert not list((killed / "checkpoints").glob("step_*"))
    resumed = subprocess.run([sys.executable, "-m", "varrl", "train", "--resume", str(tmp_path / "killed")],
                             env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    assert without_perf(tmp_path / "killed" / "metrics.jsonl") == without_perf(tmp_path / "full" / "metrics.jsonl")
    lora = (tmp_path / "full" / "last" / "adapter.safetensors").exists()
    assert lora == (extra == LORA)
    for weights in ("model", "adapter") if lora else ("model",):
        a = load_file(str(tmp_path / "full" / "last" / f"{weights}.safetensors"))
        b = load_file(str(tmp_path / "killed" / "last" / f"{weights}.safetensors"))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    ra = json.loads((tmp_path / "full" / "report.json").read_text())["eval"]
    rb = json.loads((tmp_path / "killed" / "report.json").read_text())["eval"]
    assert ra == rb and [e["step"] for e in ra] == [0, 4, 8, 12]


def test_resume_with_another_thread_count_warns(tmp_path):
    # CPU float rounding depends on torch's thread count: a resume at another count is another sample.
    model = tmp_path / "model"
    write_model_dir(model, *build_tiny(model_kwargs=dict(max_text_len=128)))
    args = [sys.executable, "-m", "varrl", "train",
            *tinyrun.run_args(model, tmp_path, "r", "train.steps=1", "train.eval_every=0", "train.save_every=1",
                              "train.threads=1")]
    assert subprocess.run(args, capture_output=True).returncode == 0

    def resume(threads, steps):
        out = subprocess.run([sys.executable, "-m", "varrl", "train", "--resume", str(tmp_path / "r"),
                              f"train.threads={threads}", f"train.steps={steps}"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stderr

    err = resume(2, 2)
    assert "step_00000001 was written with 1 torch threads and this resume has 2" in err
    assert "resume with train.threads=1" in err
    assert "torch threads" not in resume(2, 3)  # step 2 was written with 2
