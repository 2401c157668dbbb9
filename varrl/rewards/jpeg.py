"""JPEG compressibility (as in DDPO): a download-free reward for class-conditional RL.

    score = -(size of the image as a JPEG at `quality`, in kB = 1000 bytes)

So higher is better and scores are negative: a flat image scores near -1, a 256 px noise image
about -100 at quality 95. Negate the weight to reward incompressibility (detail) instead.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from varrl.rewards.base import Reward, RewardResult, check_inputs


def jpeg_kb(img_HW3: np.ndarray, quality: int) -> float:
    """Size in kB (1000 bytes) of the uint8 RGB image encoded by Pillow as a baseline JPEG."""
    buf = io.BytesIO()
    Image.fromarray(img_HW3, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0


@dataclass
class JpegConfig:
    """Settings of the JPEG compressibility reward."""

    quality: int = 95
    """JPEG quality (1-95) the images are encoded at"""

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 95:
            raise ValueError(f"jpeg.quality must be in 1..95 (Pillow's useful range), got {self.quality}")


class JpegReward(Reward):
    """score = -JPEG size in kB: rewards images that compress well."""

    name = "jpeg"

    def __init__(self, config: JpegConfig | None = None):
        self.config = config or JpegConfig()

    def __call__(self, images_BHW3: np.ndarray, prompts: list, meta: list[dict]) -> RewardResult:
        check_inputs(images_BHW3, prompts, meta)
        kb_B = np.array([jpeg_kb(np.ascontiguousarray(img), self.config.quality) for img in images_BHW3])
        return RewardResult(scores=-kb_B, components={"kb": kb_B})
