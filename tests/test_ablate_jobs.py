"""`varrl ablate --jobs N`: the grid's runs as N `varrl train` processes side by side, with the same
results as one after another, and no child outliving the command however it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from proctree import cmdline, descendants, wait_gone
from tinymodel import build_tiny, write_model_dir
from tinyrun import run_args

from varrl.checkpoint import latest_checkpoint
from varrl.cli import main
from varrl.recipes.ablate_jobs import Job, run_jobs
from varrl.stop import Stopped

CELLS = ["--cell", "a: rl.method=grpo", "--cell", "b: rl.method=var_rl"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("jobs") / "model"
    write_model_dir(path, *build_tiny(model_kwargs=dict(max_text_len=128)))
    return path


def metrics(run) -> list[dict]:
    return [{k: v for k, v in json.loads(ln).items() if not k.startswith("perf/")}
            for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_side_by_side_runs_match_one_after_another(tiny_dir, tmp_path, capsys):
    common = ["--seeds", "1", "--steps", "2", *run_args(tiny_dir, tmp_path, None, "train.threads=1")]
    assert main(["ablate", *CELLS, "--name", "serial", *common]) == 0
    assert main(["ablate", *CELLS, "--name", "jobs", "--jobs", "2", *common]) == 0
    out = capsys.readouterr().out
    assert "started a/seed0" in out and "finished b/seed0" in out
    for cell in ("a", "b"):
        assert metrics(tmp_path / "jobs" / cell / "seed0") == metrics(tmp_path / "serial" / cell / "seed0")
        assert (tmp_path / "jobs" / cell / "seed0.log").stat().st_size > 0
    assert (tmp_path / "jobs" / "ablation.md").exists()
    assert main(["ablate", *CELLS, "--name", "jobs", "--jobs", "0", *common]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err


def test_a_failed_run_is_named_with_its_log_and_the_others_finish(tiny_dir, tmp_path, capsys):
    common = ["--seeds", "1", "--steps", "1", "--name", "f", "--jobs", "2",
              *run_args(tiny_dir, tmp_path, None, "train.threads=1")]
    (tmp_path / "f" / "a" / "seed0").mkdir(parents=True)
    (tmp_path / "f" / "a" / "seed0" / "config.yaml").write_text("not: [a, config")  # a damaged run folder
    assert main(["ablate", *CELLS, *common]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("varrl ablate: error: 1 of 2 runs failed: a/seed0 (exit 2: varrl train: error:"), err
    assert str(tmp_path / "f" / "a" / "seed0.log") in err
    assert (tmp_path / "f" / "b" / "seed0" / "report.json").exists()
    assert "| b |" in (tmp_path / "f" / "ablation.md").read_text()  # the table of what finished


def test_a_stop_during_the_launches_starts_no_further_run_and_stops_the_started_one(tiny_dir, tmp_path):
    jobs = [Job(f"c/seed{k}", ["train", *run_args(tiny_dir, tmp_path, f"r{k}", "train.steps=500", "train.threads=1")],
                tmp_path / f"r{k}.log") for k in range(3)]
    lines = []

    def say(line):  # the signal lands just after the first child started, with two more to launch
        lines.append(line)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as info:
        run_jobs(jobs, 3, say)
    assert info.value.how == "SIGTERM"
    assert lines == [f"started c/seed0 (log: {tmp_path / 'r0.log'})"]
    assert not (tmp_path / "r1.log").exists() and not (tmp_path / "r2.log").exists()
    assert not [p for p in descendants(os.getpid()) if "varrl" in cmdline(p)]  # the started one was stopped
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_no_run_outlives_a_stopped_or_killed_ablation(tiny_dir, tmp_path, sig):
    args = [sys.executable, "-m", "varrl", "ablate", *CELLS, "--seeds", "1", "--steps", "500", "--name", "k",
            "--jobs", "2", *run_args(tiny_dir, tmp_path, None, "train.threads=1", "train.save_every=1")]
    proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    runs = [tmp_path / "k" / c / "seed0" for c in ("a", "b")]
    tree: set[int] = set()
    try:
        deadline = time.time() + 180
        while (any(latest_checkpoint(r / "checkpoints") is None for r in runs) and proc.poll() is None
               and time.time() < deadline):
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        tree = descendants(proc.pid)  # the two runs (and their own helpers)
        assert sum("varrl" in cmdline(p) and "train" in cmdline(p) for p in tree) == 2
        proc.send_signal(sig)
        err = proc.communicate(timeout=300)[1]
        left = wait_gone(tree, timeout_s=30)
        assert not left, f"still running after the ablation ended: {[cmdline(p) for p in left]}"
    finally:
        proc.kill()
        for p in tree:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert err.strip().splitlines()[-1].startswith("varrl ablate: stopped by SIGTERM; the runs were stopped")
    for r in runs:  # each child stopped itself cleanly: its last words name the resume command
        last = (r.parent / "seed0.log").read_text().replace("\r", "\n").strip().splitlines()[-1]
        assert last.startswith(f"varrl train: stopped by SIGTERM; varrl train --resume {r} goes on"), last
