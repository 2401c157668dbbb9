"""Cheap programmatic rewards: no models, no downloads; for tests and tiny runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from varrl.config_checks import check_ranges, probability
from varrl.rewards.base import Reward, RewardResult, check_inputs


@dataclass
class BrightnessConfig:
    """Settings of the brightness reward."""

    target: float = 0.5
    """mean pixel value in [0, 1] that scores best"""

    def __post_init__(self) -> None:
        check_ranges(self, {"target": probability})


class BrightnessReward(Reward):
    """score = -|mean pixel value / 255 - target|: 0 at the target brightness, down to -1."""

    name = "brightness"

    def __init__(self, config: BrightnessConfig | None = None):
        self.config = config or BrightnessConfig()

    def __call__(self, images_BHW3: np.ndarray, prompts: list[str], meta: list[dict]) -> RewardResult:
        check_inputs(images_BHW3, prompts, meta)
        mean_B = images_BHW3.mean(axis=(1, 2, 3), dtype=np.float64) / 255.0
        return RewardResult(scores=-np.abs(mean_B - self.config.target), components={"mean": mean_B})
