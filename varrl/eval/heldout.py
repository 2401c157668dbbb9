"""Held-out text-rendering check: sample a policy on unseen prompts and OCR the images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from varrl.data.synth import SynthConfig, SynthGenerator
from varrl.policy.sampler import SamplerConfig
from varrl.textmetrics import WordStats, word_stats
from varrl.viz import to_uint8


@dataclass
class HeldoutResult:
    word_acc: float
    ned: float
    images: np.ndarray  # uint8 [N, H, W, 3]
    prompts: list[str]
    reads: list[list[str]]


def heldout_prompts(data: SynthConfig, n: int, max_regions: int = 2,
                    seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """n prompts of the held-out split (words never used in training) with at most max_regions words."""
    # The data's own region mix, cut at max_regions (a model is not asked for more words than it learned).
    mix = {k: v for k, v in data.region_mix.items() if k != ">5" and int(k) <= max_regions}
    cfg = SynthConfig(**{**data.__dict__, "region_mix": mix or {"1": 1.0}})
    gen = SynthGenerator(cfg, "heldout", seed)
    samples = [gen.sample(i) for i in range(n)]
    return [s.prompt for s in samples], [s.words for s in samples]


@torch.no_grad()
def measure_word_accuracy(policy, prompts: list[str], words: list[list[str]], sampler: SamplerConfig,
                          seed: int, ocr, batch: int = 16) -> HeldoutResult:
    """Sample one image per prompt, OCR it; word accuracy = share of target words read exactly."""
    images, reads = [], []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(prompts), batch):
        traj = policy.rollout(prompts[i: i + batch], n=1, sampler=sampler, generator=gen)
        imgs = to_uint8(policy.decode(traj))
        images.append(imgs)
        reads += [[w.text for w in r] for r in ocr.read(list(imgs))]
    stats = sum((word_stats(w, r) for w, r in zip(words, reads)), WordStats())
    return HeldoutResult(stats.word_acc or 0.0, stats.ned or 0.0, np.concatenate(images), list(prompts), reads)
