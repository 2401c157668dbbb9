"""Run directories: the lock that gives one process the right to write a run, the metrics log every
run keeps, and the error for a directory that is not a run."""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np


class RunDirError(ValueError):
    pass


LOCK_FILE = ".lock"


class RunLock:
    """An exclusive hold on a run directory: only the holder writes it. Two trainers on one run (a
    scheduler's requeue while the old job still runs) would interleave their metrics and trip over
    each other's checkpoints.

    The hold is an flock on run_dir/.lock, which the kernel releases when the holder dies, however
    it dies; the file's JSON body (host, pid, since) names the holder in the error another process
    gets. A body left by a holder that was killed is taken over with a warning. The file itself is
    never deleted (an unlink could let two processes lock two different files of one name)."""

    def __init__(self, run_dir: str | Path, warn=None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr))
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_body(fd)
            os.close(fd)
            raise RunDirError(f"{self.run_dir} is in use by {_describe(holder)}: only one process may write a run. "
                              "Wait for it to end (or stop it), then run again") from None
        except OSError as e:  # a file system without locks (some network mounts): trust the body alone
            holder = _read_body(fd)
            if holder and _may_live(holder):
                os.close(fd)
                raise RunDirError(f"{self.run_dir} is in use by {_describe(holder)} (this file system cannot lock "
                                  f"files: {e.strerror}); if that process has ended, delete {self.path} and run "
                                  "again") from None
        stale = _read_body(fd)
        if stale:  # a holder that died without releasing: its body is all that is left
            self.warn(f"taking over the lock of {self.run_dir} from {_describe(stale)}, which has ended")
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since})
        os.ftruncate(fd, 0)
        os.pwrite(fd, body.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        os.ftruncate(self._fd, 0)  # an empty body: released, nothing to take over
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_body(fd: int) -> dict:
    try:
        body = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {"pid": "?"}  # a body cut short: someone held it
    return body if isinstance(body, dict) else {"pid": "?"}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (it has just taken the lock)"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(holding it since {holder.get('since', '?')})")


def _may_live(holder: dict) -> bool:
    """Whether the process a lock body names may still run: another host's cannot be checked."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except (KeyError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class MetricLog:
    """Append-only JSONL metrics; on resume, lines past the checkpoint's step are dropped so that a
    killed-and-resumed run has the same log as an uninterrupted one."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if _step(ln) <= resume_step]
            tmp = path.with_name(f".{path.name}.tmp")  # a kill during the rewrite keeps the old log whole
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        rec = {"step": step, **{k: (float(v) if isinstance(v, (int, float, np.floating)) else v)
                                for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def _step(line: str) -> float:
    """A log line's step; a line cut short by a kill mid-write has none (inf: dropped on resume)."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return float("inf")
