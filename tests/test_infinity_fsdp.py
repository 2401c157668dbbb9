"""`train.fsdp`: FSDP2 over two CPU processes (gloo) under torchrun on the tiny Infinity. A sharded
run takes the same steps as the all-reduce data-parallel run (same metrics, same weights up to
float rounding of the gradient reduction), writes full checkpoints, resumes bit-identically, shards
the frozen KL reference too, and keeps its ranks in step when one of them has no row to train."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_infinity_train import files, rows, train_args  # noqa: F401  (files: the module's fixture)

from varrl.cli import main
from varrl.policy.load import load_policy

FSDP = ("train.fsdp=true",)
COMMON = ("train.steps=2", "train.save_every=1", "rl.method=grpo", "train.grad_checkpointing=true")


def torchrun(*args, timeout=420):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "varrl",
           *args]
    # Its own process group: a hang (ranks out of step) fails the test and leaves no rank behind.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s")
    assert proc.returncode == 0, err[-3000:]


def step_rows(run, step):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows(run)
            if r["step"] == step and "reward/mean" in r]


@pytest.mark.slow
def test_fsdp_matches_data_parallel_and_resumes_exactly(files, tmp_path):  # noqa: F811
    torchrun(*train_args(files, tmp_path, "dp", *COMMON))
    torchrun(*train_args(files, tmp_path, "fsdp", *COMMON, *FSDP))
    dp, fs = step_rows(tmp_path / "dp", 2), step_rows(tmp_path / "fsdp", 2)
    assert len(dp) == len(fs) == 1 and fs[0]["policy/kl"] > 0  # the sharded reference is in use
    for k, v in dp[0].items():
        assert fs[0][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    a = load_file(str(tmp_path / "dp" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    ckpt = tmp_path / "fsdp" / "checkpoints" / "step_00000002"
    assert json.loads((ckpt / "state.json").read_text())["world"] == 2
    optim = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert "head.weight" in optim["state"]  # a full optimizer state, keyed by parameter name
    full = load_file(str(ckpt / "model.safetensors"))
    assert all(full[k].shape == a[k].shape for k in a)  # gathered, not one rank's shard
    # Stop after one step, resume under torchrun: the same second step, bit for bit.
    torchrun(*train_args(files, tmp_path, "part", *COMMON, *FSDP, "train.steps=1"))
    torchrun("train", "--resume", str(tmp_path / "part"), "train.steps=2")
    assert step_rows(tmp_path / "part", 2) == step_rows(tmp_path / "fsdp", 2)
    c = load_file(str(tmp_path / "part" / "last" / "model.safetensors"))
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_fsdp_ranks_stay_in_step_when_one_has_no_rows(files, tmp_path):  # noqa: F811
    # Rank 0 always draws line 1 (words to read), rank 1 line 2 (none): the OCR reward is NaN for all
    # of rank 1's rows, so it has nothing to train, yet must make the same sharded calls as rank 0.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a sign with the text \\"CAT\\"", "words": ["CAT"]}\n'
                       '{"prompt": "a red wall", "words": []}\n')
    # (Also the paper's method, VMR's prefix stage, and bf16 autocast with its bf16 reference, sharded.)
    torchrun(*train_args(files, tmp_path, "nan", *FSDP, "train.steps=1", "policy.dtype=bfloat16",
                         f"data.prompts_file={prompts}", "reward.weights={text_ocr: 1.0}"), timeout=300)
    m = step_rows(tmp_path / "nan", 1)[0]  # (without the matching passes: a hang, until the timeout)
    assert m["reward/skipped_groups"] == 1 and m["policy/grad_norm"] >= 0 and "stage/prefix/loss" in m


def test_fsdp_needs_several_processes(files, tmp_path, capsys):  # noqa: F811
    assert main(train_args(files, tmp_path, "one", *FSDP)) == 2
    assert "torchrun --nproc-per-node" in capsys.readouterr().err
    assert main(["train", "train.fsdp=1"]) == 2  # a bool, not a number


@pytest.mark.slow
def test_fsdp_with_lora_matches_data_parallel_and_resumes_exactly(files, tmp_path):  # noqa: F811
    # Adapters go on before sharding; the KL reference is the sharded base with them off (no copy).
    lora = ("train.lora.rank=2", "train.lr=1e-2", "rl.kl_beta=0.1")
    torchrun(*train_args(files, tmp_path, "dp", *COMMON, *lora))
    torchrun(*train_args(files, tmp_path, "fsdp", *COMMON, *lora, *FSDP))
    dp, fs = step_rows(tmp_path / "dp", 2), step_rows(tmp_path / "fsdp", 2)
    assert len(dp) == len(fs) == 1 and fs[0]["policy/kl"] > 0
    for k, v in dp[0].items():
        assert fs[0][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    model, _, _ = files
    base = load_file(str(model))
    for run in ("dp", "fsdp"):  # last/: the untouched base in its released layout, plus the adapters
        saved = load_file(str(tmp_path / run / "last" / "model.safetensors"))
        assert saved.keys() == base.keys() and all(torch.equal(base[k], saved[k]) for k in base)
    a = load_file(str(tmp_path / "dp" / "last" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "last" / "adapter.safetensors"))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert max(v.abs().max().item() for k, v in b.items() if ".lora_B." in k) > 0  # they trained
    ckpt = tmp_path / "fsdp" / "checkpoints" / "step_00000002"
    assert load_file(str(ckpt / "model.safetensors")).keys() == b.keys()  # adapters only, gathered whole
    optim = torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]
    assert optim and all(".lora_" in k for k in optim)  # the adapters' AdamW state only, keyed by name
    assert load_policy(tmp_path / "fsdp").lora is not None  # what varrl sample --checkpoint loads
    # Stop after one step, resume under torchrun: the same second step, bit for bit.
    torchrun(*train_args(files, tmp_path, "part", *COMMON, *lora, *FSDP, "train.steps=1"))
    torchrun("train", "--resume", str(tmp_path / "part"), "train.steps=2")
    assert step_rows(tmp_path / "part", 2) == step_rows(tmp_path / "fsdp", 2)
    c = load_file(str(tmp_path / "part" / "last" / "adapter.safetensors"))
    assert all(torch.equal(b[k], c[k]) for k in b)


@pytest.mark.slow
def test_fsdp_with_lora_rewrites_a_base_removed_from_last_mid_run(files, tmp_path):  # noqa: F811
    # After its first save a session only links last/'s base; if someone removes it meanwhile, the
    # next save must gather the sharded base again on every rank, not fail on rank 0 alone.
    args = train_args(files, tmp_path, "run", *COMMON, "train.steps=3", "train.lora.rank=2", *FSDP)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "varrl",
           *args]
    log = tmp_path / "torchrun.log"  # a file: a pipe nobody reads while we wait could fill and stall the run
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    base = tmp_path / "run" / "last" / "model.safetensors"
    try:
        while not base.exists() and proc.poll() is None:
            time.sleep(0.01)
        assert base.exists(), log.read_text()[-3000:]  # the run ended before its first save
        base.unlink()
        saved_then = len(list((tmp_path / "run" / "checkpoints").glob("step_*")))
        proc.wait(timeout=420)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert saved_then < 3  # removed before the run's last save
    assert proc.returncode == 0, log.read_text()[-3000:]
    model, _, _ = files
    want, got = load_file(str(model)), load_file(str(base))
    assert got.keys() == want.keys() and all(torch.equal(want[k], got[k]) for k in want)
