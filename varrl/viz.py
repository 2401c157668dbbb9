"""Image grids with captions (sample sheets for runs and the sampling CLI)."""

from __future__ import annotations

import textwrap

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from varrl.data.synth import load_font


def to_uint8(img_B3HW: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] -> uint8 [B, H, W, 3]."""
    arr = (img_B3HW.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray | list[np.ndarray], captions: list[str] | None = None,
               cols: int | None = None, scale: int = 1, caption_lines: int = 3) -> Image.Image:
    """Tile uint8 HxWx3 images in a grid; optional caption text under each tile."""
    images = list(images)
    if not images:
        raise ValueError("image_grid needs at least one image")
    n = len(images)
    cols = cols or min(n, 8)
    rows = (n + cols - 1) // cols
    h, w = images[0].shape[:2]
    h, w = h * scale, w * scale
    font: ImageFont.ImageFont = load_font("DejaVuSans", 10)
    cap_h = 12 * caption_lines + 4 if captions else 0
    sheet = Image.new("RGB", (cols * (w + 4) + 4, rows * (h + cap_h + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    chars_per_line = max(8, w // 6)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        x, y = 4 + c * (w + 4), 4 + r * (h + cap_h + 4)
        tile = Image.fromarray(img)
        if scale != 1:
            tile = tile.resize((w, h), Image.NEAREST)
        sheet.paste(tile, (x, y))
        if captions:
            lines = textwrap.wrap(captions[i], chars_per_line)[:caption_lines]
            for j, line in enumerate(lines):
                draw.text((x, y + h + 2 + 12 * j), line, fill=(0, 0, 0), font=font)
    return sheet
