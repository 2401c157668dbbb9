"""`varrl train` under torchrun with 2 processes (gloo on CPU): it completes, and a dead rank fails the job."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinymodel import build_tiny, write_model_dir
from tinyrun import run_args


def torchrun(model, run_dir, name, steps, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "varrl",
            "train", *run_args(model, run_dir, name, "train.prompts_per_step=4", f"train.steps={steps}",
                               "train.eval_every=2", "train.save_every=1", "train.eval_prompts=5",
                               "train.micro_batch=4", "train.lr=3e-3", "rl.adv_norm=batch", *extra)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "model"
    write_model_dir(path, *build_tiny(model_kwargs=dict(max_text_len=128)))
    return path


def test_two_processes_train_and_report(model, tmp_path):
    out = subprocess.run(torchrun(model, tmp_path, "dp", 3), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "dp"
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]  # one line per step: only rank 0 writes
    report = json.loads((run / "report.json").read_text())
    assert [e["step"] for e in report["eval"]] == [0, 2, 3]
    state = json.loads((run / "checkpoints" / "step_00000003" / "state.json").read_text())
    assert state["world"] == 2 and len(state["rng"]) == 2
    # Resuming with a different number of processes is refused with a clear message.
    single = subprocess.run([sys.executable, "-m", "varrl", "train", "--resume", str(run), "train.steps=4"],
                            capture_output=True, text=True)
    assert single.returncode == 2 and "--nproc-per-node 2" in single.stderr


def test_two_processes_train_lora_adapters(model, tmp_path):
    extra = ("train.lora.rank=2", "rl.kl_beta=0.1", "train.lr=1e-2")
    out = subprocess.run(torchrun(model, tmp_path, "lora", 2, *extra), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    last = tmp_path / "lora" / "last"
    before, after = load_file(str(model / "model.safetensors")), load_file(str(last / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base stays frozen on every rank
    adapters = load_file(str(last / "adapter.safetensors"))
    assert max(v.abs().max().item() for k, v in adapters.items() if ".lora_B." in k) > 0
    recs = [json.loads(ln) for ln in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "policy/kl" in r] == [1, 2]
    # Resuming under torchrun loads the checkpoint's adapters on every rank.
    resumed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                              "-m", "varrl", "train", "--resume", str(tmp_path / "lora"), "train.steps=3"],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def _worker_pids(parent: int) -> dict[int, int]:
    """rank -> pid of the processes torchrun started (found through their environment)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            for kv in env:
                if kv.startswith(b"RANK="):
                    found[int(kv[5:])] = int(d.name)
    return found


@pytest.mark.skipif(not Path("/proc").exists(), reason="finds worker processes through /proc")
def test_a_dead_rank_fails_the_job_instead_of_hanging(model, tmp_path):
    proc = subprocess.Popen(torchrun(model, tmp_path, "die", 200), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ckpt = tmp_path / "die" / "checkpoints" / "step_00000002"
    deadline = time.time() + 180
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before a rank could be killed"
    pids = _worker_pids(proc.pid)
    assert 1 in pids, pids
    os.kill(pids[1], signal.SIGKILL)
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("torchrun hung after a rank died")
    assert rc != 0


@pytest.mark.parametrize("extra", [
    ["rl.method=var_rl", "rl.vmr.splits=[1, 2]"],
    ["rl.method=grpo", "rl.region_credit.enabled=true", "reward.weights={text_ocr: 1.0}", "reward.text_ocr.workers=0",
     "rl.adv_norm=loo"],
    ["rl.method=grpo", "rl.region_credit.enabled=true", "rl.region_credit.unit=letter", "rl.region_credit.outside=mask",
     "reward.weights={text_ocr: 1.0}", "reward.text_ocr.workers=0", "rl.adv_norm=group", "rl.adv_std_floor=0.1"],
    ["rl.method=grpo", "rl.last_grid=2", "sampler.tail_after=2", "sampler.tail_temperature=0.05"],
], ids=["per_scale", "region_credit_loo", "region_letter_floor", "last_grid_cold_tail"])
@pytest.mark.slow
def test_two_processes_with_the_credit_levers(model, tmp_path, extra):
    # Values and word scores are gathered over ranks before the advantages, like the returns.
    args = torchrun(model, tmp_path, "lever", 2, "train.eval_every=0", "train.save_every=2", *extra)
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    recs = [json.loads(ln) for ln in (tmp_path / "lever" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["policy/ratio_dev_first"] == 0.0 for r in steps)
