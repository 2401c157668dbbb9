"""Held-out evaluation during training: one sample per prompt with a fixed seed (the same noise at
every evaluation, so curves compare weights, not luck), scored by the training reward."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from varrl.data.prompts import PromptRecord
from varrl.policy.sampler import SamplerConfig
from varrl.rewards import Reward
from varrl.trainer.batches import cat_results, full_batch
from varrl.trainer.dist import DistInfo, gather_objects


@dataclass
class EvalResult:
    metrics: dict[str, float | None]
    images: np.ndarray  # uint8 [N, H, W, 3] (gathered from every rank)
    captions: list[str]
    boxes: list[list] | None  # per image, the regions the reward returned
    scores_P: np.ndarray  # per prompt, the reward (NaN: not applicable), for paired comparisons
    words_right_P: np.ndarray | None  # per prompt, target words read right (NaN: no words or no reading;
    #                                   None: the reward reads no text)


def standard_error(x: np.ndarray) -> float | None:
    """Standard error of the mean of the finite values of x (sample std / sqrt(n)): the noise of
    one evaluation, to read a change between evaluations against. None for fewer than 2 values."""
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else None


def evaluate(policy, records: list[PromptRecord], sampler: SamplerConfig, seed: int, reward: Reward,
             rows_per_chunk: int, info: DistInfo) -> EvalResult:
    mine = [records[i] for i in np.array_split(np.arange(len(records)), info.world)[info.rank]]
    # Per-rank seeds differ so that two ranks never draw the same noise for different prompts.
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 7 + info.rank)
    if mine:
        batch = full_batch(policy, mine, 1, sampler, gen, reward, rows_per_chunk)
        part = (batch.images, batch.reward)
    else:
        part = None
    parts = [p for p in gather_objects(info, part) if p is not None]
    images = np.concatenate([p[0] for p in parts])
    res = cat_results([p[1] for p in parts])
    metrics: dict[str, float | None] = {"reward_mean": float(np.nanmean(res.scores)) if np.isfinite(res.scores).any()
                                        else None, "reward_sem": standard_error(res.scores)}
    # Word accuracy and NED pooled over target words (a 2-word prompt counts twice), when the
    # reward reads text; other rewards report them as null.
    n_words = np.array([len(r.words) for r in records], dtype=np.float64)
    per_prompt = {}  # key -> per prompt, that fraction times the prompt's words (NaN: not read)
    for key in ("word_acc", "ned"):
        metrics[key] = None
        comp = next((v for k, v in res.components.items() if k.endswith("/" + key)), None)
        if comp is None:
            continue
        per_prompt[key] = v = np.where(np.isfinite(comp) & (n_words > 0), comp * n_words, np.nan)
        read = np.isfinite(v)
        if read.any():
            metrics[key] = float(v[read].sum() / n_words[read].sum())
    words_right_P = per_prompt.get("word_acc")
    for k, v in res.components.items():
        if np.isfinite(v).any():
            metrics[f"reward/{k}"] = float(np.nanmean(v))
    captions = []
    for i, r in enumerate(records):
        read = "" if res.texts is None else " | read: " + " ".join(res.texts[i])
        captions.append(f"{r.prompt} | R={res.scores[i]:.2f}{read}")
    return EvalResult(metrics, images, captions, res.boxes, np.asarray(res.scores, np.float64), words_right_P)


def pooled_metrics(results: list[EvalResult]) -> dict[str, float | None]:
    """The metrics of one model evaluated on the same prompts at several noise seeds: each metric the
    mean of the seeds' values (None where every seed has none), except reward_sem, the standard
    error over prompts of each prompt's mean reward over the seeds (the prompts' spread; averaging
    seeds takes out sampling luck, not that). One result: its own metrics."""
    if len(results) == 1:
        return dict(results[0].metrics)
    out: dict[str, float | None] = {}
    for key in dict.fromkeys(k for r in results for k in r.metrics):
        vals = [r.metrics.get(key) for r in results]
        vals = [v for v in vals if v is not None]
        out[key] = float(np.mean(vals)) if vals else None
    scores_SP = np.stack([r.scores_P for r in results])
    seen_P = np.isfinite(scores_SP).any(0)
    mean_P = np.full(scores_SP.shape[1], np.nan)
    mean_P[seen_P] = np.nanmean(scores_SP[:, seen_P], axis=0)
    out["reward_sem"] = standard_error(mean_P)
    return out
