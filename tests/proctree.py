"""Process trees through `ps` (Linux and macOS): which processes a process started, and whether they live."""

from __future__ import annotations

import subprocess
import time


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, their children, ...)."""
    out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return {p for p in found if alive(p)}


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(out) and not out.startswith("Z")


def wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    """The pids still alive after up to `timeout_s` seconds of waiting for them to end."""
    deadline = time.time() + timeout_s
    left = {p for p in pids if alive(p)}
    while left and time.time() < deadline:
        time.sleep(0.1)
        left = {p for p in left if alive(p)}
    return left


def cmdline(pid: int) -> str:
    out = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    return out.stdout.strip()
