"""Run directories: the metrics log every run keeps, and the error for a directory that is not a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class RunDirError(ValueError):
    pass


class MetricLog:
    """Append-only JSONL metrics; on resume, lines past the checkpoint's step are dropped so that a
    killed-and-resumed run has the same log as an uninterrupted one."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        rec = {"step": step, **{k: (float(v) if isinstance(v, (int, float, np.floating)) else v)
                                for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
