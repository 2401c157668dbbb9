"""The three kinds of training batch: plain GRPO, and VMR's prefix and suffix stages.

Each returns a `StageBatch`: the trajectory rows to update, the return each row is judged by
(final reward, or the soft value for prefixes), its group, the boxes that decided it (for MP) and
the steps the update trains. Sampling goes chunk by chunk and every chunk's images go to the
reward at once, so out-of-process scoring overlaps with sampling the next chunk."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from varrl.algorithms.per_scale import segments
from varrl.algorithms.vmr import soft_value, stage_steps
from varrl.data.prompts import PromptRecord
from varrl.policy.sampler import SamplerConfig
from varrl.policy.trajectory import Trajectory
from varrl.rewards import Reward, RewardResult
from varrl.viz import to_uint8


@dataclass
class StageBatch:
    stage: str  # "full", "prefix", "suffix" or "per_scale"
    traj: Trajectory  # rows to update (prefix rows hold grids 1..m only)
    returns: torch.Tensor  # [B] what advantages are computed from (NaN: not applicable); groups: traj.group
    boxes: list[list] | None  # per row, the regions that decided its return
    steps: list[int]  # 0-based steps the update trains
    images: np.ndarray  # uint8 [N, H, W, 3]: every scored image (the completions, for prefixes)
    reward: RewardResult  # every scored image of the batch, for logging
    rollout_s: float
    reward_wait_s: float
    values: torch.Tensor | None = None  # per_scale: [B, J] soft values at the splits (NaN: not applicable)
    segments: list[list[int]] | None = None  # per_scale: the 0-based steps of each segment
    words: list[list] | None = None  # per row, its WordScores, when its return is its own final reward

    def up_to(self, m: int) -> StageBatch:
        """The batch training grids 1..m only (rl.last_grid): its trajectory is cut there, so the
        update's teacher-forced pass stops at grid m. The images, returns and boxes stay those of
        the complete samples."""
        if m >= self.traj.num_steps:
            return self
        return replace(self, traj=self.traj.cut(m), steps=[t for t in self.steps if t < m])


class _Scorer:
    """Samples rollouts and hands each one's images to the reward at once; `finish` waits for all."""

    def __init__(self, policy, reward: Reward, sampler: SamplerConfig, generator: torch.Generator):
        self.policy, self.reward, self.sampler, self.generator = policy, reward, sampler, generator
        self.trajs, self.images, self.pending = [], [], []
        self.t0, self.sampling_s = time.perf_counter(), 0.0

    def sample(self, prompts, n: int, start: Trajectory | None = None, steps: int | None = None) -> Trajectory:
        t0 = time.perf_counter()
        traj = self.policy.rollout(prompts, n=n, sampler=self.sampler, generator=self.generator, start=start,
                                   steps=steps)
        self.sampling_s += time.perf_counter() - t0
        return traj

    def sample_and_score(self, prompts, n: int, meta: list[dict], start: Trajectory | None = None) -> Trajectory:
        traj = self.sample(prompts, n, start)
        t0 = time.perf_counter()
        images = to_uint8(self.policy.decode(traj))
        self.sampling_s += time.perf_counter() - t0
        self.pending.append(self.reward.submit(images, traj.prompts, meta))
        self.trajs.append(traj)
        self.images.append(images)
        return traj

    def finish(self) -> tuple[Trajectory, np.ndarray, RewardResult, float, float]:
        t1 = time.perf_counter()
        res = cat_results([p.result() for p in self.pending])
        return (Trajectory.cat(self.trajs), np.concatenate(self.images), res, self.sampling_s,
                time.perf_counter() - t1)


def cat_results(results: list[RewardResult]) -> RewardResult:
    boxes = None if any(r.boxes is None for r in results) else [b for r in results for b in r.boxes]
    texts = None if any(r.texts is None for r in results) else [t for r in results for t in r.texts]
    words = None if any(r.words is None for r in results) else [w for r in results for w in r.words]
    names = results[0].components.keys()
    return RewardResult(np.concatenate([r.scores for r in results]), boxes,
                        {k: np.concatenate([r.components[k] for r in results]) for k in names}, texts, words)


def _chunks(records: list[PromptRecord], rows_per_prompt: int, rows_per_chunk: int):
    per = max(1, rows_per_chunk // max(1, rows_per_prompt))
    for i in range(0, len(records), per):
        yield i, records[i: i + per]


def full_batch(policy, records, G: int, sampler, generator, reward, rows_per_chunk: int,
               group_offset: int = 0) -> StageBatch:
    """Plain GRPO (and evaluation, with G = 1): G complete samples per prompt, every step trained
    on the final reward; group = group_offset + the prompt's position."""
    sc = _Scorer(policy, reward, sampler, generator)
    for i, chunk in _chunks(records, G, rows_per_chunk):
        traj = sc.sample_and_score([r.prompt for r in chunk], G, [r.reward_meta() for r in chunk for _ in range(G)])
        traj.group = traj.group + group_offset + i
    traj, images, res, ro, wait = sc.finish()
    return StageBatch("full", traj, torch.from_numpy(res.scores), res.boxes,
                      list(range(policy.schedule.num_steps)), images, res, ro, wait, words=res.words)


def prefix_batch(policy, records, G: int, K: int, m: int, eta: float, sampler, generator, reward,
                 rows_per_chunk: int, group_offset: int = 0) -> StageBatch:
    """VMR prefix stage: G prefixes (grids 1..m) per prompt, K completions of each continuing the
    prefix's KV cache; a prefix's return is the soft value of its K rewards; the boxes of its K
    completions are pooled (their union) for MP."""
    prefix_steps, _ = stage_steps(policy.schedule.num_steps, m)
    sc = _Scorer(policy, reward, sampler, generator)
    prefixes = []
    for i, chunk in _chunks(records, G * K, rows_per_chunk):
        pre = sc.sample([r.prompt for r in chunk], G, steps=m)
        pre.group = pre.group + group_offset + i
        prefixes.append(pre)
        sc.sample_and_score(None, K, [r.reward_meta() for r in chunk for _ in range(G * K)], start=pre)
    _, images, res, ro, wait = sc.finish()
    pre = Trajectory.cat(prefixes)
    value = soft_value(torch.from_numpy(res.scores).view(-1, K), eta)  # rows: prefix-major, K each
    boxes = None
    if res.boxes is not None:
        boxes = [[b for k in range(K) for b in res.boxes[row * K + k]] for row in range(pre.batch_size)]
    return StageBatch("prefix", pre, value, boxes, prefix_steps, images, res, ro, wait)


def suffix_batch(policy, records, S: int, G: int, m: int, sampler, generator, reward, rows_per_chunk: int,
                 group_offset: int = 0) -> StageBatch:
    """VMR suffix stage: S shared prefixes per prompt and G completions of each; advantages within
    the completions of one prefix; steps m+1..T trained on the final reward."""
    _, suffix_steps = stage_steps(policy.schedule.num_steps, m)
    sc = _Scorer(policy, reward, sampler, generator)
    for i, chunk in _chunks(records, S * G, rows_per_chunk):
        pre = sc.sample([r.prompt for r in chunk], S, steps=m)
        # One group per shared prefix: (prompt index) * S + (prefix index), distinct over ranks.
        pre.group = (group_offset + i) * S + torch.arange(pre.batch_size)
        sc.sample_and_score(None, G, [r.reward_meta() for r in chunk for _ in range(S * G)], start=pre)
    traj, images, res, ro, wait = sc.finish()
    return StageBatch("suffix", traj, torch.from_numpy(res.scores), res.boxes, suffix_steps, images,
                      res, ro, wait, words=res.words)


def per_scale_batch(policy, records, G: int, K: int, splits: list[int], eta: float, sampler, generator, reward,
                    rows_per_chunk: int, group_offset: int = 0) -> StageBatch:
    """Per-scale VMR: G samples per prompt, grown split by split, each state s_mj forking K
    completions (its soft value V(s_mj)) before the sample itself goes on to the next split and
    finally to the end. The rows to update are the G complete samples, every step trained; their
    return is their own final reward, `values` [B, J] the soft values at the splits, and their
    boxes those of their own final image."""
    J, T = len(splits), policy.schedule.num_steps
    sc = _Scorer(policy, reward, sampler, generator)
    roles = []  # per scored rollout, in submission order: (split index, or J for the samples themselves, rows)
    for i, chunk in _chunks(records, G * K, rows_per_chunk):
        meta = [r.reward_meta() for r in chunk for _ in range(G)]
        state = None
        for j, m in enumerate(splits):
            # Both forks continue the state's KV caches (Trajectory.state), nothing is recomputed.
            state = sc.sample([r.prompt for r in chunk] if state is None else None, G if state is None else 1,
                              start=state, steps=m)
            if j == 0:
                state.group = state.group + group_offset + i
            sc.sample_and_score(None, K, [x for x in meta for _ in range(K)], start=state)
            roles.append((j, state.batch_size * K))
        sc.sample_and_score(None, 1, meta, start=state)
        roles.append((J, state.batch_size))
    traj, images, res, ro, wait = sc.finish()
    pick: dict[int, list[int]] = {j: [] for j in range(J + 1)}
    row = 0
    for j, n in roles:
        pick[j] += range(row, row + n)
        row += n
    own = pick[J]
    scores = torch.from_numpy(res.scores)
    # Completion rows of a split come prefix-major (K per sample), and samples keep their order.
    values = torch.stack([soft_value(scores[pick[j]].view(-1, K), eta) for j in range(J)], dim=1)
    return StageBatch("per_scale", traj.select(own), scores[own], None if res.boxes is None else
                      [res.boxes[k] for k in own], list(range(T)), images, res, ro, wait, values,
                      segments(splits, T))
