"""JPEG compressibility reward: sign, units and ordering, checked against an independent encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from varrl.config import ConfigError, from_dict
from varrl.rewards import RewardConfig, build_reward
from varrl.rewards.jpeg import JpegConfig, JpegReward, jpeg_kb


def _encoded_bytes(img: np.ndarray, quality: int) -> int:
    path = io.BytesIO()
    Image.fromarray(img).save(path, "JPEG", quality=quality)
    return len(path.getvalue())


def test_score_is_minus_kilobytes_and_flat_beats_noise():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), 128, np.uint8)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    images = np.stack([flat, noise])
    res = JpegReward(JpegConfig(quality=90))(images, [3, 7], [{}, {}])  # integer class conditions are fine
    want_kb = np.array([_encoded_bytes(flat, 90), _encoded_bytes(noise, 90)]) / 1000.0
    np.testing.assert_allclose(res.components["kb"], want_kb)
    np.testing.assert_allclose(res.scores, -want_kb)
    assert res.scores[0] > res.scores[1]  # the flat image compresses far better
    assert want_kb[1] > 5 * want_kb[0]
    assert jpeg_kb(noise, 10) < jpeg_kb(noise, 90)  # lower quality, smaller file


def test_config_checks_quality_and_registry():
    with pytest.raises(ConfigError, match="quality"):
        from_dict(RewardConfig, {"jpeg": {"quality": 0}})
    cfg = from_dict(RewardConfig, {"weights": {"jpeg": 1.0}, "jpeg": {"quality": 80}})
    img = np.zeros((1, 16, 16, 3), np.uint8)
    res = build_reward(cfg)(img, ["0"], [{}])
    assert res.scores[0] == pytest.approx(-_encoded_bytes(img[0], 80) / 1000.0)
    assert "jpeg/kb" in res.components
