"""Rewards for RL fine-tuning: a batch of images and prompts in, one score per image out.

Add a reward by writing a `Reward` subclass with its own settings dataclass, then adding it to
`REWARDS` and a field of that name to `RewardConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from varrl.config_types import FieldError
from varrl.rewards.base import CombinedReward, Pending, Reward, RewardResult, check_inputs
from varrl.rewards.classifier import ClassifierConfig, ClassifierReward
from varrl.rewards.clip_score import ClipScoreConfig, ClipScoreReward
from varrl.rewards.hpsv3 import HpsV3Config, HpsV3Reward
from varrl.rewards.jpeg import JpegConfig, JpegReward
from varrl.rewards.simple import BrightnessConfig, BrightnessReward
from varrl.rewards.text_ocr import TextOcrConfig, TextOcrReward, text_ocr_terms

REWARDS: dict[str, tuple[type[Reward], type]] = {
    "text_ocr": (TextOcrReward, TextOcrConfig),
    "brightness": (BrightnessReward, BrightnessConfig),
    "clip_score": (ClipScoreReward, ClipScoreConfig),
    "hpsv3": (HpsV3Reward, HpsV3Config),
    "jpeg": (JpegReward, JpegConfig),
    "classifier": (ClassifierReward, ClassifierConfig),
}


@dataclass
class RewardConfig:
    """Which rewards to use, their weights, and each reward's settings."""

    weights: dict[str, float] = field(default_factory=lambda: {"text_ocr": 1.0})
    """reward name -> weight in the sum; a weight of 0 computes and logs a reward without training on it"""
    text_ocr: TextOcrConfig = field(default_factory=TextOcrConfig)
    brightness: BrightnessConfig = field(default_factory=BrightnessConfig)
    clip_score: ClipScoreConfig = field(default_factory=ClipScoreConfig)
    hpsv3: HpsV3Config = field(default_factory=HpsV3Config)
    jpeg: JpegConfig = field(default_factory=JpegConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    def __post_init__(self) -> None:
        example = "e.g. reward.weights={text_ocr: 1.0}"
        if not self.weights:
            raise FieldError("weights", f"is empty; name at least one of {', '.join(sorted(REWARDS))}: {example}")
        unknown = [name for name in self.weights if name not in REWARDS]
        if unknown:
            raise FieldError("weights", f"names unknown reward(s) {unknown}; valid names: {sorted(REWARDS)}")
        for name, w in self.weights.items():
            if not math.isfinite(w):
                raise FieldError(f"weights.{name}", f"must be a finite number, got {w}")
        if not any(self.weights.values()):
            raise FieldError("weights", "are all 0, so every reward is only logged and the update has nothing to "
                                        f"follow; give at least one reward a non-zero weight, {example}")


def build_reward(cfg: RewardConfig) -> Reward:
    """The weighted sum of the rewards named in cfg.weights.

    Always a CombinedReward, even for one reward, so the trainer sees the same component names
    (`text_ocr`, `text_ocr/comp`, ...) whatever the mix."""
    if not cfg.weights:
        raise ValueError(f"reward weights are empty; name at least one of {sorted(REWARDS)}")
    unknown = [name for name in cfg.weights if name not in REWARDS]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; valid names: {sorted(REWARDS)}")
    parts = [(REWARDS[name][0](getattr(cfg, name)), weight) for name, weight in cfg.weights.items()]
    return CombinedReward(parts)


__all__ = [
    "REWARDS", "BrightnessConfig", "BrightnessReward", "CombinedReward", "Pending", "Reward", "RewardConfig",
    "RewardResult", "TextOcrConfig", "TextOcrReward", "build_reward", "check_inputs", "text_ocr_terms",
    "ClassifierConfig", "ClassifierReward", "ClipScoreConfig", "ClipScoreReward", "HpsV3Config", "HpsV3Reward",
    "JpegConfig", "JpegReward",
]
