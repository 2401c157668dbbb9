"""OCR worker processes end with the process that started them, however it ends (SIGKILL included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from proctree import cmdline, descendants, wait_gone
from tinymodel import build_tiny, write_model_dir

from varrl.ocr import PARENT_POLL_S


def spawned_workers(pid: int) -> set[int]:
    return {p for p in descendants(pid) if "spawn_main" in cmdline(p)}


def test_sigkilled_trainer_leaves_no_ocr_worker(tmp_path):
    model = tmp_path / "model"
    write_model_dir(model, *build_tiny())
    args = [sys.executable, "-m", "varrl", "train", f"policy.path={model}", f"run.dir={tmp_path}", "run.name=r",
            "reward.weights={text_ocr: 1.0}", "reward.text_ocr.workers=2", "train.steps=500", "train.eval_prompts=2",
            "train.prompts_per_step=2", "train.group_size=2", "train.micro_batch=4", "train.threads=1", "rl.vmr.m=2"]
    proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    tree: set[int] = set()
    try:
        deadline = time.time() + 120
        while len(spawned_workers(proc.pid)) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before its OCR workers started"
        assert len(spawned_workers(proc.pid)) == 2, "the OCR workers did not start"
        time.sleep(1.0)  # let them get into their work (loading the OCR models, or reading)
        tree = descendants(proc.pid)  # the workers and multiprocessing's resource tracker
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = wait_gone(tree, timeout_s=5 * PARENT_POLL_S + 3)
        assert not left, f"still running after the trainer was killed: {[cmdline(p) for p in left]}"
    finally:
        proc.kill()
        for p in tree:  # on failure: do not leave the orphans behind for the rest of the suite
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
