"""Pieces every recipe shares: run directories, metric logs, LR schedules, batches of synthetic data."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from varrl.data.synth import SynthGenerator
from varrl.rundir import MetricLog, RunDirError  # noqa: F401 (re-exported for the recipes)


def cosine_lr(step: int, total: int, base: float, warmup: int, final_frac: float = 0.1) -> float:
    """Linear warm-up to `base`, then cosine decay to `final_frac * base` at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def synth_batch(gen: SynthGenerator, start: int, n: int):
    """Samples start..start+n-1 as (float images [n, 3, H, W] in [0, 1], samples)."""
    samples = [gen.sample(i) for i in range(start, start + n)]
    img = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255.0
    return img, samples


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        t = time.perf_counter()
        dt, self.t0 = t - self.t0, t
        return dt
