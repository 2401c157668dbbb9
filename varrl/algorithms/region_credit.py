"""Region-level credit: a reward that decomposes over target words (the OCR reward's Comp and Sim
are means over words) credits the tokens inside a word's box with that word's own advantage.

Each word's scores are normalised across the samples of its group, exactly as image rewards are
(`group_advantages`, the rows of a group ask for the same words in the same order). The box of a
word becomes a mask on the finest grid and every coarser grid with MP's machinery
(`varrl.algorithms.masks`); a cell covered by several words takes the mean of their advantages
weighted by the share of the cell each covers. Cells outside every word take the image's own
advantage (outside="image") or none (outside="mask": no policy gradient, as an MP mask). A sample
none of whose words was read keeps its image advantage on every token: the reward said nothing
about where."""

from __future__ import annotations

from typing import Literal

import torch

from varrl.algorithms.grpo import AdvNorm, group_advantages
from varrl.algorithms.masks import Box, boxes_to_mask, coverage, pooled

Outside = Literal["image", "mask"]


def word_advantages(scores: list[list[float]], group_B: torch.Tensor, norm: AdvNorm = "group",
                    clip: float | None = None, std_floor: float = 0.0) -> list[torch.Tensor]:
    """Per row, float64 [N_i] advantages of its words: word w of the rows of one group forms one
    group of `group_advantages` with `norm`, `clip` and `std_floor` (NaN scores and words only one
    row has get 0)."""
    keys = [(int(g), w) for row, g in zip(scores, group_B.tolist()) for w in range(len(row))]
    flat = torch.tensor([s for row in scores for s in row], dtype=torch.float64)
    if not keys:
        return [flat.new_zeros(0) for _ in scores]
    _, key_K = torch.unique(torch.tensor(keys), dim=0, return_inverse=True)
    return list(group_advantages(flat, key_K, norm, clip=clip, std_floor=std_floor).split([len(row) for row in scores]))


def token_advantages(word_adv: list[torch.Tensor], word_boxes: list[list[list[Box]]], image_adv_B: torch.Tensor,
                     image_hw: tuple[int, int], grids: list[tuple[int, int]], steps: list[int],
                     pool: Literal["max", "area"] = "max", threshold: float = 0.5, dilation: int = 0,
                     outside: Outside = "image") -> list[torch.Tensor]:
    """Per trained step (the order of `steps`, indices into `grids`), [B, h_t*w_t] token
    advantages (row-major, a grid's token order) in image_adv_B's dtype.

    word_adv[i][w] is word w's advantage in row i and word_boxes[i][w] its boxes. A cell of grid t
    is inside word w when w's propagated mask (pool, threshold) is on there; it then weighs w by
    the share of the cell w's finest-grid mask covers."""
    if outside not in ("image", "mask"):
        raise ValueError(f"outside must be 'image' or 'mask', got {outside!r}")
    out: list[list[torch.Tensor]] = [[] for _ in steps]
    for i, (adv_N, boxes_N) in enumerate(zip(word_adv, word_boxes)):
        masks = [(boxes_to_mask(b, image_hw, grids[-1], dilation), float(a)) for a, b in zip(adv_N.tolist(), boxes_N)
                 if b]
        masks = [(m, a) for m, a in masks if m.any()]
        image = float(image_adv_B[i])
        for k, t in enumerate(steps):
            h, w = grids[t]
            if not masks:  # no word was read: the image's advantage everywhere
                out[k].append(torch.full((h * w,), image, dtype=torch.float64))
                continue
            num = torch.zeros(h, w, dtype=torch.float64)
            den = torch.zeros(h, w, dtype=torch.float64)
            for m, a in masks:
                cov = coverage(m, (h, w))
                weight = cov * pooled(cov, pool, threshold)
                num += weight * a
                den += weight
            rest = image if outside == "image" else 0.0
            adv_hw = torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, rest))
            out[k].append(adv_hw.flatten())
    return [torch.stack(rows).to(image_adv_B.dtype) if rows else image_adv_B.new_zeros(0, grids[t][0] * grids[t][1])
            for rows, t in zip(out, steps)]
