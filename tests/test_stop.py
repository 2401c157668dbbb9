"""A stop asked for (SIGTERM from kill or a scheduler, Ctrl-C) ends `varrl train` cleanly: one line
that says how to go on, the shell's exit code, no worker left, no warning from multiprocessing's
resource tracker, and a run that resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from proctree import descendants, wait_gone
from tinymodel import build_tiny, write_model_dir

from varrl.checkpoint import CKPT_RE, latest_checkpoint
from varrl.stop import Stopped, deferred_stops, sigterm_stops


def test_stopped_exit_codes_and_the_handler_comes_back():
    assert Stopped("SIGTERM").exit_code == 143 and Stopped().exit_code == 130
    assert isinstance(Stopped(), KeyboardInterrupt)  # code that lets Ctrl-C through lets it through
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as info:
        with sigterm_stops():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at the next bytecode; never reached
    assert info.value.how == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("sig, name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")])
def test_a_deferred_stop_is_recorded_and_raised_only_when_checked(sig, name):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with deferred_stops() as stop:
        stop.check()  # nothing asked for yet
        os.kill(os.getpid(), sig)
        os.kill(os.getpid(), signal.SIGTERM if sig == signal.SIGINT else signal.SIGINT)  # the first one counts
        time.sleep(0.1)  # the handler has run by now, and raised nothing
        assert stop.how == name
        with pytest.raises(Stopped) as info:
            stop.check()
    assert info.value.how == name
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("sig, name, code", [(signal.SIGTERM, "SIGTERM", 143), (signal.SIGINT, "Ctrl-C", 130)])
def test_a_stopped_run_says_how_to_resume_and_leaves_nothing_behind(tmp_path, sig, name, code):
    model = tmp_path / "model"
    write_model_dir(model, *build_tiny())
    run = tmp_path / "r"
    args = [sys.executable, "-m", "varrl", "train", f"policy.path={model}", f"run.dir={tmp_path}", "run.name=r",
            "reward.weights={text_ocr: 1.0}", "reward.text_ocr.workers=2", "train.steps=500", "train.eval_prompts=2",
            "train.prompts_per_step=2", "train.group_size=2", "train.micro_batch=4", "train.threads=1", "rl.vmr.m=2",
            "train.save_every=1"]
    # SIGINT as a terminal leaves it: a shell without job control (a CI script's background job)
    # starts its children with SIGINT ignored, and then Ctrl-C could not reach the run at all.
    proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tree: set[int] = set()
    try:
        deadline = time.time() + 180
        while latest_checkpoint(run / "checkpoints") is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be stopped"
        tree = descendants(proc.pid)  # the OCR workers and the resource tracker
        proc.send_signal(sig)
        err = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "leaked" not in err, err
    step = int(CKPT_RE.match(latest_checkpoint(run / "checkpoints").name).group(1))
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert last == (f"varrl train: stopped by {name}; varrl train --resume {run} goes on from its checkpoint "
                    f"at step {step}")
    assert not wait_gone(tree, timeout_s=10), "a process outlived the stopped run"
    # The lock is free and the checkpoint whole: the run goes on from where it stopped.
    done = subprocess.run([sys.executable, "-m", "varrl", "train", "--resume", str(run), f"train.steps={step + 1}"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (run / "report.json").exists()
