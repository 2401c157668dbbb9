"""The contract every next-scale model adapter implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from varrl.policy.sampler import SamplerConfig
from varrl.policy.trajectory import Trajectory
from varrl.schedule import ScaleSchedule


@runtime_checkable
class NextScalePolicy(Protocol):
    schedule: ScaleSchedule

    def rollout(self, prompts: list[str] | None, n: int, sampler: SamplerConfig,
                generator: torch.Generator | None = None, start: Trajectory | None = None,
                steps: int | None = None) -> Trajectory:
        """Sample n trajectories per prompt, or n continuations of each row of a prefix `start`."""
        ...

    def logprobs(self, traj: Trajectory, steps: list[int] | None = None) -> list[torch.Tensor]:
        """Per-token log-probs of the stored grids under the current weights (one forward pass)."""
        ...

    def decode(self, traj: Trajectory) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1]."""
        ...

    def check_prompts(self, prompts: list[str]) -> None:
        """Raise a clear error for a prompt this model cannot take (before any long work starts)."""
        ...

    def prompt_text(self, text: str) -> str:
        """The text as the model reads it (e.g. accents dropped): a reward's target words go through
        the same mapping, so that rendering exactly what the model was asked for scores as correct."""
        ...


def rollout_origin(prompts: list | None, n: int, sampler: SamplerConfig, start: Trajectory | None,
                   steps: int | None, num_steps: int) -> tuple[list, int, torch.Tensor, int]:
    """Check a rollout's arguments, the same for every model; return where it starts: the base
    rows' prompts, the grids already drawn (0, or the prefix's), their prompt groups, and the grid
    count to stop at. A fresh rollout's prompts are the caller's to check against its model."""
    steps = num_steps if steps is None else steps
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if start is None:
        if not prompts:
            raise ValueError("rollout needs at least one prompt")
        base, m, group = list(prompts), 0, torch.arange(len(prompts))
    else:
        if prompts is not None and list(prompts) != start.prompts:
            raise ValueError("with start=..., pass prompts=None or the prefix's own per-row prompts")
        if start.sampler.logprob_mode != sampler.logprob_mode:
            raise ValueError("a continuation must store log-probs in the prefix's logprob_mode")
        base, m, group = start.prompts, start.num_steps, start.group
    if not m < steps <= num_steps:
        raise ValueError(f"steps must be in {m + 1}..{num_steps}, got {steps}")
    return base, m, group, steps
