"""Rollouts with their rewards: sample chunk by chunk and hand each chunk's images to the reward at
once, so that out-of-process scoring (OCR workers) overlaps with sampling the next chunk."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from varrl.data.prompts import PromptRecord
from varrl.policy.sampler import SamplerConfig
from varrl.policy.trajectory import Trajectory
from varrl.rewards import Reward, RewardResult
from varrl.viz import to_uint8


@dataclass
class ScoredBatch:
    traj: Trajectory
    images: np.ndarray  # uint8 [B, H, W, 3]
    reward: RewardResult
    rollout_s: float
    """time spent sampling and decoding"""
    reward_wait_s: float
    """time spent waiting for rewards after sampling finished (the part the overlap did not hide)"""


def cat_results(results: list[RewardResult]) -> RewardResult:
    boxes = None if any(r.boxes is None for r in results) else [b for r in results for b in r.boxes]
    texts = None if any(r.texts is None for r in results) else [t for r in results for t in r.texts]
    names = results[0].components.keys()
    return RewardResult(np.concatenate([r.scores for r in results]), boxes,
                        {k: np.concatenate([r.components[k] for r in results]) for k in names}, texts)


def rollout_and_score(policy, records: list[PromptRecord], n: int, sampler: SamplerConfig,
                      generator: torch.Generator, reward: Reward, rows_per_chunk: int,
                      group_offset: int = 0) -> ScoredBatch:
    """n samples for each record; trajectory rows are prompt-major and `group` = group_offset + the
    record's position, so groups stay distinct when several ranks' batches are put together."""
    per_chunk = max(1, rows_per_chunk // n)
    trajs, images, pending = [], [], []
    t0 = time.perf_counter()
    for i in range(0, len(records), per_chunk):
        chunk = records[i: i + per_chunk]
        traj = policy.rollout([r.prompt for r in chunk], n=n, sampler=sampler, generator=generator)
        traj.group = traj.group + group_offset + i
        imgs = to_uint8(policy.decode(traj))
        pending.append(reward.submit(imgs, traj.prompts, [r.reward_meta() for r in chunk for _ in range(n)]))
        trajs.append(traj)
        images.append(imgs)
    t1 = time.perf_counter()
    result = cat_results([p.result() for p in pending])
    return ScoredBatch(Trajectory.cat(trajs), np.concatenate(images), result, t1 - t0, time.perf_counter() - t1)
