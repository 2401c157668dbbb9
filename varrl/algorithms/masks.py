"""MP (mask propagation): the regions that decided the reward (e.g. OCR word boxes) become a mask on
the finest token grid, then on every coarser grid, so the update only pushes the tokens that matter.

Coverage is computed exactly with integer arithmetic: along one axis a coarse grid of n cells
and a fine grid of f cells both tile [0, n*f), coarse cell i as [i*f, (i+1)*f) and fine cell j as
[j*n, (j+1)*n), so overlaps are integers and cells that only touch never count."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def boxes_to_mask(boxes: list[Box], image_hw: tuple[int, int], grid_hw: tuple[int, int],
                  dilation: int = 0) -> torch.Tensor:
    """Bool [h, w]: a cell is on when a box overlaps it with positive area; then grown by
    `dilation` cells in every direction."""
    H, W = image_hw
    h, w = grid_hw
    mask = torch.zeros(h, w, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        if x1 <= x0 or y1 <= y0:
            continue
        # Cell c spans [c*W/w, (c+1)*W/w): on when x0 < (c+1)*W/w and x1 > c*W/w.
        cols = [c for c in range(w) if x0 * w < (c + 1) * W and x1 * w > c * W]
        rows = [r for r in range(h) if y0 * h < (r + 1) * H and y1 * h > r * H]
        if rows and cols:
            mask[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1] = True
    if dilation > 0 and mask.any():
        k = 2 * dilation + 1
        mask = F.max_pool2d(mask[None, None].float(), k, stride=1, padding=dilation)[0, 0] > 0
    return mask


@lru_cache(maxsize=256)
def _overlap_matrix(n_coarse: int, n_fine: int) -> torch.Tensor:
    """float64 [n_coarse, n_fine] integer overlap lengths on the common [0, n_coarse*n_fine) axis
    (cached: region credit asks for the same few shapes thousands of times per step; read-only)."""
    i = torch.arange(n_coarse)[:, None]
    j = torch.arange(n_fine)[None, :]
    lo = torch.maximum(i * n_fine, j * n_coarse)
    hi = torch.minimum((i + 1) * n_fine, (j + 1) * n_coarse)
    return (hi - lo).clamp(min=0).double()


def coverage(mask_hw: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Float [h, w]: the share of each cell of `grid_hw` covered by on-cells of `mask_hw`."""
    H, W = mask_hw.shape
    h, w = grid_hw
    oy = _overlap_matrix(h, H)
    ox = _overlap_matrix(w, W)
    covered = oy @ mask_hw.double() @ ox.T
    return covered / (H * W)  # each coarse cell has area (H*h/h)*(W*w/w) = H*W in these units


def propagate(mask_hw: torch.Tensor, grids: list[tuple[int, int]], pool: Literal["max", "area"] = "max",
              threshold: float = 0.5) -> list[torch.Tensor]:
    """The finest-grid mask carried to every grid of the schedule -> list of bool [h_t, w_t].

    max: a cell is on when any finer on-cell overlaps it (nothing that matters is dropped);
    area: when at least `threshold` of its area is covered. The finest grid keeps the mask."""
    if pool not in ("max", "area"):
        raise ValueError(f"mask pool must be 'max' or 'area', got {pool!r}")
    out = []
    for hw in grids:
        if tuple(hw) == tuple(mask_hw.shape):
            out.append(mask_hw.bool().clone())
            continue
        out.append(pooled(coverage(mask_hw, hw), pool, threshold))
    return out


def pooled(coverage_hw: torch.Tensor, pool: Literal["max", "area"] = "max", threshold: float = 0.5) -> torch.Tensor:
    """Bool [h, w]: which cells a mask with this coverage turns on under `pool` (see `propagate`).
    On the mask's own grid coverage is 0 or 1, so both pools give the mask back."""
    return coverage_hw > 0 if pool == "max" else coverage_hw >= threshold - 1e-12


def batch_step_masks(boxes: list[list[Box] | None], image_hw: tuple[int, int], grids: list[tuple[int, int]],
                     pool: Literal["max", "area"] = "max", threshold: float = 0.5,
                     dilation: int = 0) -> list[torch.Tensor]:
    """Per step, float [B, h_t*w_t] masks (row-major, the token order of a grid) for a batch.
    A sample with no boxes keeps every token (the reward said nothing about where)."""
    if not boxes:  # no rows (e.g. every reward of the batch was NaN): empty masks of the right width
        return [torch.zeros(0, h * w) for h, w in grids]
    per_sample = []
    finest = grids[-1]
    for b in boxes:
        if not b:
            per_sample.append([torch.ones(h * w) for h, w in grids])
            continue
        m = boxes_to_mask(b, image_hw, finest, dilation)
        per_sample.append([x.flatten().float() for x in propagate(m, grids, pool, threshold)])
    return [torch.stack([s[t] for s in per_sample]) for t in range(len(grids))]
