"""Trajectories: the token grids a policy emitted, with the log-probs they were drawn with."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from varrl.policy.sampler import SamplerConfig
from varrl.schedule import ScaleSchedule


@dataclass
class Trajectory:
    """B rows, each a prompt and the grids of steps 1..num_steps.

    Rows of one rollout call are ordered prompt-major: row i*n + j is sample j of prompt i
    (or continuation j of prefix row i), and `group` holds that prompt's index i."""

    prompts: list[str]
    idx: list[torch.Tensor]  # per step: LongTensor [B, h_t*w_t]
    logprobs: list[torch.Tensor]  # per step: FloatTensor [B, h_t*w_t], at sampling time
    sampler: SamplerConfig
    schedule: ScaleSchedule
    group: torch.Tensor  # LongTensor [B]
    parent: torch.Tensor | None = None  # LongTensor [B]: row of the prefix it continued
    state: object | None = field(default=None, repr=False, compare=False)
    """the sampler's state after the last grid (KV cache and the like), set by a rollout that
    stopped early: continuing this exact trajectory forks it instead of recomputing the prefix.
    Any change of rows (cut, select, cat) drops it."""

    def __post_init__(self) -> None:
        B = len(self.prompts)
        if len(self.idx) != len(self.logprobs):
            raise ValueError(f"{len(self.idx)} index grids but {len(self.logprobs)} log-prob grids")
        for t, (i, lp) in enumerate(zip(self.idx, self.logprobs)):
            n = self.schedule.tokens_per_step[t]
            if tuple(i.shape) != (B, n) or tuple(lp.shape) != (B, n):
                raise ValueError(f"step {t + 1}: expected [{B}, {n}] grids, got {tuple(i.shape)} and {tuple(lp.shape)}")

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    @property
    def num_steps(self) -> int:
        return len(self.idx)

    @property
    def logprob_mode(self) -> str:
        return self.sampler.logprob_mode

    @property
    def complete(self) -> bool:
        return self.num_steps == self.schedule.num_steps

    def cut(self, m: int) -> Trajectory:
        """The prefix holding grids 1..m (a state s_m), ready to be continued from step m+1."""
        if not 1 <= m <= self.num_steps:
            raise ValueError(f"cut({m}): the trajectory has steps 1..{self.num_steps}")
        if m == self.num_steps:
            return self
        return replace(self, idx=self.idx[:m], logprobs=self.logprobs[:m], state=None)

    def select(self, rows: torch.Tensor | list[int]) -> Trajectory:
        rows = torch.as_tensor(rows, dtype=torch.long)
        pick = rows.tolist()
        return replace(self, prompts=[self.prompts[r] for r in pick], idx=[i[rows] for i in self.idx],
                       logprobs=[lp[rows] for lp in self.logprobs], group=self.group[rows],
                       parent=None if self.parent is None else self.parent[rows], state=None)

    @staticmethod
    def cat(trajs: list[Trajectory]) -> Trajectory:
        """Stack rows of trajectories with the same steps; group ids are kept as they are."""
        first = trajs[0]
        if any(t.num_steps != first.num_steps for t in trajs):
            raise ValueError("Trajectory.cat needs trajectories with the same number of steps")
        parents = [t.parent for t in trajs]
        return replace(
            first,
            prompts=[p for t in trajs for p in t.prompts],
            idx=[torch.cat([t.idx[s] for t in trajs]) for s in range(first.num_steps)],
            logprobs=[torch.cat([t.logprobs[s] for t in trajs]) for s in range(first.num_steps)],
            group=torch.cat([t.group for t in trajs]),
            parent=None if any(p is None for p in parents) else torch.cat(parents),
            state=None,
        )
