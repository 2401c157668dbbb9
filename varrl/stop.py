"""Stops a user or the system asks for (Ctrl-C, SIGTERM from `kill`, a scheduler's preemption or
torchrun), which end a command cleanly: the stack unwinds, so `finally` blocks release the run
lock and shut the OCR workers down (no orphan, no "leaked semaphore" warning from
multiprocessing's resource tracker), and the command line says how to go on."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass


class Stopped(KeyboardInterrupt):
    """A requested stop. A KeyboardInterrupt, so that code which lets Ctrl-C through lets this
    through too; `how` names the signal, `hint` (may be '') says how to continue."""

    def __init__(self, how: str = "Ctrl-C", hint: str = ""):
        super().__init__(how, hint)
        self.how, self.hint = how, hint

    @property
    def exit_code(self) -> int:
        return 128 + (signal.SIGTERM if self.how == "SIGTERM" else signal.SIGINT)  # the shell's convention


def as_stopped(err: KeyboardInterrupt, hint: str) -> Stopped:
    """err as a Stopped that says how to go on (Ctrl-C arrives as a plain KeyboardInterrupt)."""
    return Stopped(err.how if isinstance(err, Stopped) else "Ctrl-C", hint)


def _raise_stopped(signum, frame) -> None:
    raise Stopped("SIGTERM")


@contextmanager
def sigterm_stops():
    """Within: SIGTERM raises Stopped in the main thread instead of killing the process outright.
    Elsewhere (another thread cannot install handlers) nothing changes. The previous handler
    comes back afterwards, so a caller that runs several commands in one process keeps its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@dataclass
class StopRequest:
    """What deferred_stops recorded: `how` is None until a stop is asked for, then "Ctrl-C" or "SIGTERM"."""

    how: str | None = None

    def check(self) -> None:
        """Raise Stopped if a stop was asked for: call it where stopping leaves nothing half done."""
        if self.how is not None:
            raise Stopped(self.how)


@contextmanager
def deferred_stops():
    """Within: Ctrl-C and SIGTERM are recorded on the StopRequest it yields instead of raising at
    whatever bytecode runs, so that a step which must not be cut in two (start a child process and
    note it as started) never is; the caller calls .check() between such steps. Outside the main
    thread nothing changes (the request then stays empty). The previous handlers come back afterwards."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def record(signum, frame) -> None:
        if request.how is None:  # a second signal changes nothing: the stop is under way
            request.how = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"

    before = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


PARENT_POLL_S = 0.5
"""how often a child process checks that the process that started it is still there"""


def _exit_now() -> None:
    os._exit(1)  # no cleanup to wait for: the results have nobody left to go to


def exit_with_parent(parent_pid: int, poll_s: float = PARENT_POLL_S, on_orphan=_exit_now) -> threading.Thread:
    """Call on_orphan (default: end this process at once) within `poll_s` of `parent_pid` no
    longer being this process's parent, however the parent ended: SIGKILL, OOM killer, preemption.
    An orphan is re-parented (to init or a subreaper), so its parent pid changes; that test needs no
    signal from the dead parent and works on Linux and macOS alike. (Linux's PR_SET_PDEATHSIG is
    not used: it fires when the parent *thread* that spawned the child ends, and an executor may
    spawn from any thread.)"""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        on_orphan()

    t = threading.Thread(target=watch, name="varrl-parent-watch", daemon=True)
    t.start()
    return t


STOP_GRACE_S = 120.0
"""how long an orphaned run may take to stop at its next bytecode before it is ended outright"""


def stop_self() -> None:
    """An orphaned run stops as if sent SIGTERM (the lock released, its own workers shut down), and
    ends outright if that has not happened within STOP_GRACE_S (a step stuck in native code)."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(STOP_GRACE_S)
    os._exit(1)


PARENT_ENV = "VARRL_PARENT_PID"
"""set by a varrl process that starts varrl commands as children (`varrl ablate --jobs`): the child
stops when that process is gone, so that no run outlives the command that started it"""


def watch_parent_from_env() -> None:
    """In a child started with PARENT_ENV: stop (stop_self) once that parent is gone."""
    pid = os.environ.get(PARENT_ENV, "")
    if pid.isdigit():
        if os.getppid() != int(pid):  # the parent died before this process got here: nothing started yet
            raise SystemExit(1)
        exit_with_parent(int(pid), on_orphan=stop_self)
