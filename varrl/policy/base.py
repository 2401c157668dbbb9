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
