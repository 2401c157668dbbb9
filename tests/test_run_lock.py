"""One process per run directory: an exclusive lock, released on exit, taken over from a killed holder,
and refused with the holder named while it lives."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import tinyrun
from tinymodel import build_tiny, write_model_dir

from varrl.rundir import LOCK_FILE, MetricLog, RunDirError, RunLock

HOLD = ("import sys, time; from varrl.rundir import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(600)")


def hold_in_other_process(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_run_is_refused_naming_host_pid_and_since(tmp_path):
    holder = hold_in_other_process(tmp_path)
    try:
        with pytest.raises(RunDirError) as err:
            RunLock(tmp_path).acquire()
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "since 20" in msg
        assert "\n" not in msg
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_holder_is_taken_over_with_a_warning(tmp_path):
    holder = hold_in_other_process(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    heard = []
    with RunLock(tmp_path, heard.append):
        body = json.loads((tmp_path / LOCK_FILE).read_text())
        assert body["pid"] == os.getpid() and body["host"] == socket.gethostname()
    assert len(heard) == 1 and f"pid {holder.pid}" in heard[0] and "ended" in heard[0]


def test_release_leaves_nothing_to_take_over(tmp_path):
    heard = []
    with RunLock(tmp_path, heard.append):
        pass
    assert (tmp_path / LOCK_FILE).read_text() == ""
    with RunLock(tmp_path, heard.append):
        pass
    assert heard == []


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 3, "a"')
    MetricLog(path, resume_step=2)
    assert path.read_text() == '{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n'


# --- two real trainers on one run -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    write_model_dir(path, *build_tiny(model_kwargs=dict(max_text_len=128)))
    return path


def train_cmd(*args):
    return [sys.executable, "-m", "varrl", "train", *args]


def run_args(tiny_dir, run_dir, name, steps=4):
    return tinyrun.run_args(tiny_dir, run_dir, name, f"train.steps={steps}", "train.eval_every=0",
                            "train.save_every=1", "train.micro_batch=8", "train.threads=1")


STEPS = 150


def test_second_trainer_on_a_running_run_exits_naming_the_first(tiny_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(train_cmd(*run_args(tiny_dir, tmp_path, "r", steps=STEPS)), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "r"
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "step_00000001").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()[-2000:]
        for second, expected in ((train_cmd("--resume", str(run)), f"in use by pid {first.pid} on host "
                                  f"{socket.gethostname()}"),
                                 (train_cmd(*run_args(tiny_dir, tmp_path, "r")), "already holds a run")):
            out = subprocess.run(second, env=env, capture_output=True, text=True, timeout=120)
            err = out.stderr.strip()
            assert out.returncode == 2 and len(err.splitlines()) == 1 and expected in err, err[-2000:]
        assert first.poll() is None, "the first run ended before the second was tried: make it longer"
        assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    finally:
        first.kill()
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and [r["step"] for r in records if "reward/mean" in r] == list(range(1, STEPS + 1))
    assert (run / LOCK_FILE).read_text() == ""  # released on exit
