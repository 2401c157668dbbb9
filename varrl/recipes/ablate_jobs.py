"""`varrl ablate --jobs N`: the grid's runs as N `varrl train` processes at a time.

On a machine with more cores than one run uses (say `train.threads=1` on 2 cores), several runs
side by side finish a grid sooner; a run's result depends on its seed and thread count, not on what
runs beside it. Each run is a plain `varrl train` child with its output in `<cell>/seed<k>.log`.
The children end with this process however it ends: Ctrl-C or SIGTERM stops them cleanly (each at
its next step, resumable) before this process exits, and if this process is killed outright each
child notices within a second and stops itself (varrl.stop.watch_parent_from_env)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from varrl.errors import RunFailedError
from varrl.stop import PARENT_ENV, deferred_stops

CHILD_STOP_S = 300.0
"""how long stopped children may take to reach the end of their step before they are killed"""


@dataclass
class Job:
    label: str  # cell/seedK
    argv: list[str]  # after `varrl`
    log: Path


def run_jobs(jobs: list[Job], n: int, say=print) -> None:
    """Run `jobs` (in order) n at a time; raise RunFailedError naming the runs that failed, once
    every other has finished. Ctrl-C or SIGTERM stops the children cleanly and raises Stopped."""
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    pending, running, failed = list(jobs), {}, []
    # A stop is acted on between launches, never inside one: a signal landing after a child has
    # started but before it is in `running` would otherwise leave that child training on its own.
    with deferred_stops() as stop:
        try:
            while pending or running:
                stop.check()
                while pending and len(running) < n and stop.how is None:
                    job = pending.pop(0)
                    running[_start(job, env)] = (job, time.time())
                    say(f"started {job.label} (log: {job.log})")
                time.sleep(0.5)
                for proc in [p for p in running if p.poll() is not None]:
                    job, t0 = running.pop(proc)
                    if proc.returncode == 0:
                        say(f"finished {job.label} in {(time.time() - t0) / 60:.1f} min")
                    else:
                        failed.append((job, proc.returncode, _last_line(job.log)))
                        say(f"FAILED {job.label} (exit {proc.returncode}): {failed[-1][2]}")
        except KeyboardInterrupt:  # the stop asked for (or a Ctrl-C outside the main thread)
            _stop(list(running))
            raise
    if failed:
        names = "; ".join(f"{j.label} (exit {rc}: {line})" for j, rc, line in failed)
        raise RunFailedError(f"{len(failed)} of {len(jobs)} runs failed: {names}. Their logs: "
                             f"{', '.join(str(j.log) for j, _, _ in failed)}; the others finished, and running "
                             "the same command again retries the failed ones")


def _start(job: Job, env: dict[str, str]) -> subprocess.Popen:
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "ab") as log:  # appended: a resumed run keeps its earlier output
        # A session of its own: a Ctrl-C in the terminal reaches this process only, which then
        # stops each child once (a second signal could cut a child's cleanup short).
        return subprocess.Popen([sys.executable, "-m", "varrl", *job.argv], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every child (each stops at its next step, its lock released and resumable), wait for
    them, and kill any that has not stopped within CHILD_STOP_S."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + CHILD_STOP_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _last_line(log: Path) -> str:
    """The last non-empty line of a child's log (its error line, for a failed run)."""
    try:
        text = log.read_bytes()[-4000:].decode("utf-8", "replace").replace("\r", "\n")
    except OSError:
        return "(no log)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(empty log)"
