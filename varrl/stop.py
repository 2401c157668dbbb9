"""Stops a user or the system asks for (Ctrl-C, SIGTERM from `kill`, a scheduler's preemption or
torchrun), which end a command cleanly: the stack unwinds, so `finally` blocks release the run
lock and shut the OCR workers down (no orphan, no "leaked semaphore" warning from
multiprocessing's resource tracker), and the command line says how to go on."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


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
