"""Character-level credit: each rendered letter's tokens are judged by that letter, not by the image.

A text-rendering image is judged by a reward shared by every one of its tokens, so a token that drew
a correct letter takes the blame for a wrong letter elsewhere: that sharing is most of the noise of
the policy gradient. The OCR read says more than one number. Aligning each target word with the
read that the reward credited it to (the closest read, as the reward's Sim term picks it) says
which target letters were read correctly and where on the image each read letter sits (the read's
box split evenly between its letters: exact for monospace text, close for proportional fonts).

`varrl.rewards.text_ocr.word_marks` makes the marks. A *mark* is one localised letter:
(x0, y0, x1, y1, key, value), key = "<word>:<letter>" of the target and value 1 (read as asked) or
0 (read as another letter). Target letters with no read letter (deleted, or the whole word
unread) get value 0 and no box: they count in their group's baseline but credit no token.

Within a group (the samples of one prompt) each key gets a GRPO advantage of its own; a token then
takes the coverage-weighted sum of the advantages of the marks over its cell, and the rest of its
cell takes the image's advantage ("image") or none ("zero"). Coarse grids, whose cells hold whole
words, so mix their letters' advantages.
"""

from __future__ import annotations

from collections import defaultdict

import torch

Box = tuple[float, float, float, float]
Mark = tuple[float, float, float, float, str, float]  # x0, y0, x1, y1, key, value


def mark_advantages(marks_B: list[list], group_B: torch.Tensor, eps: float = 1e-4) -> list[dict[str, float]]:
    """Per sample, key -> advantage: (value - the group's mean value of that key) / its group std.

    A key a sample has no entry for counts as 0 (the letter was not read) in the mean and std.
    Keys whose values are equal over the group carry no signal and get no entry."""
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group_B.tolist()):
        members[g].append(i)
    values = [{m[4]: m[5] for m in marks} for marks in marks_B]
    out: list[dict[str, float]] = [{} for _ in marks_B]
    for rows in members.values():
        keys = set().union(*(values[i].keys() for i in rows))
        for key in keys:
            v = torch.tensor([values[i].get(key, 0.0) for i in rows], dtype=torch.float64)
            c = v - v.mean()
            if bool((c == 0).all()):
                continue
            a = c / (c.pow(2).mean().sqrt() + eps)
            for i, a_i in zip(rows, a.tolist()):
                out[i][key] = a_i
    return out


def cell_coverage(box: Box, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> torch.Tensor:
    """Float [h, w]: the share of each grid cell's area that the pixel box covers."""
    H, W = image_hw
    h, w = grid_hw
    x0, y0, x1, y1 = box

    def axis(a0: float, a1: float, size: int, n: int) -> torch.Tensor:
        lo = torch.arange(n, dtype=torch.float64) * size / n
        hi = lo + size / n
        return (torch.minimum(hi, torch.tensor(a1, dtype=torch.float64))
                - torch.maximum(lo, torch.tensor(a0, dtype=torch.float64))).clamp(min=0) * n / size

    return axis(y0, y1, H, h)[:, None] * axis(x0, x1, W, w)[None, :]


def token_advantages(marks_B: list[list], adv_key_B: list[dict[str, float]], image_adv_B: torch.Tensor,
                     image_hw: tuple[int, int], grids: list[tuple[int, int]],
                     outside: str = "image") -> list[torch.Tensor]:
    """Per grid, float [B, h*w] (row-major) advantages: sum over the sample's marks of
    coverage * mark advantage, plus (1 - covered share) * the image advantage (outside="image") or
    nothing ("zero"). Marks whose key has no advantage (no signal in the group) count as covered
    with advantage 0, so a correct letter in a group that never missed it is left alone."""
    if outside not in ("image", "zero"):
        raise ValueError(f"outside must be 'image' or 'zero', got {outside!r}")
    B = len(marks_B)
    out = [torch.zeros(B, h * w, dtype=torch.float64) for h, w in grids]
    for b in range(B):
        boxed = [m for m in marks_B[b] if m[0] is not None]
        for t, (h, w) in enumerate(grids):
            covered = torch.zeros(h, w, dtype=torch.float64)
            credit = torch.zeros(h, w, dtype=torch.float64)
            for x0, y0, x1, y1, key, _ in boxed:
                cov = cell_coverage((x0, y0, x1, y1), image_hw, (h, w))
                covered += cov
                credit += cov * adv_key_B[b].get(key, 0.0)
            # Letters of one read never overlap, but reads of two words may: never credit a cell twice.
            scale = torch.where(covered > 1, 1.0 / covered, torch.ones_like(covered))
            credit, covered = credit * scale, covered * scale
            if outside == "image":
                credit = credit + (1 - covered) * float(image_adv_B[b])
            out[t][b] = credit.flatten()
    return [x.float() for x in out]
