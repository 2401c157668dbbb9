"""Infinity's scale schedules: which token grid each step emits, per aspect ratio and pixel budget.

Infinity was trained on 15 aspect-ratio templates (height / width); each has one list of 13 grids,
and a pixel budget takes its first 7 (`0.06M`, about 256x256 px), 10 (`0.25M`, 512x512), 12
(`0.60M`, 768x768) or all 13 (`1M`, 1024x1024). A token covers 16x16 px. The grids below are the
released models' (FoundationVision/Infinity, infinity/utils/dynamic_resolution.py); the tall
templates (h/w > 1) are listed, the wide ones are their transposes.

RoPE positions are scaled to the last grid of the template's `1M` schedule whatever the budget
(`rope_grid`), so the 256 px schedule of a model sees the same positions as the first 7 grids of
its 1024 px one.

Step resolutions for VMR's `m`: on a square template step t is grid side x 16 px (step 7 of every
budget is 256 px). The grids of other templates at step t cover the same area as the square one's,
so step t is named by the square grid's side there too: `rl.vmr.m: 256px` is step 7 at every
aspect ratio.
"""

from __future__ import annotations

import math

from varrl.schedule import ScaleSchedule

PATCH_PX = 16
"""image pixels per token side (the tokenizer's downsampling, or 8 x the 2x2 spatial patchify)"""

BUDGET_STEPS = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
"""pixel budget -> number of grids (steps)"""
BUDGET_ALIASES = {"256px": "0.06M", "512px": "0.25M", "768px": "0.60M", "1024px": "1M"}

_TALL_GRIDS: dict[float, tuple[tuple[int, int], ...]] = {
    1.000: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40),
            (48, 48), (64, 64)),
    1.250: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36),
            (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36),
            (60, 45), (72, 54)),
    1.500: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32),
            (63, 42), (78, 52)),
    1.750: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32),
            (70, 40), (84, 48)),
    2.000: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30),
            (74, 37), (90, 45)),
    2.500: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26),
            (80, 32), (100, 40)),
    3.000: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24),
            (90, 30), (111, 37)),
}


def _templates() -> dict[float, tuple[tuple[int, int], ...]]:
    # The official table keys a wide template by 1/ratio truncated to 3 decimals (0.666, 0.571, ..),
    # inserted right after its tall twin: nearest-template ties then resolve as they do there.
    out = {}
    for ratio, grids in _TALL_GRIDS.items():
        out[ratio] = grids
        if ratio != 1.0:
            out[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in grids)
    return out


TEMPLATES = _templates()
"""template aspect ratio (height / width) -> its 13 grids (h, w), coarse to fine"""


class ScheduleError(ValueError):
    pass


def template_ratio(aspect_ratio: float) -> float:
    """The released template nearest to `aspect_ratio` (height / width), as the official tools pick it."""
    if not (isinstance(aspect_ratio, (int, float)) and math.isfinite(aspect_ratio) and aspect_ratio > 0):
        raise ScheduleError(f"aspect_ratio must be a positive number (height / width), got {aspect_ratio!r}")
    return min(TEMPLATES, key=lambda r: abs(float(aspect_ratio) - r))  # min keeps the first of a tie


def budget_name(name: str) -> str:
    """'0.06M' .. '1M', also given as '256px' .. '1024px'."""
    key = str(name).strip()
    key = BUDGET_ALIASES.get(key.lower(), key)
    if key not in BUDGET_STEPS:
        raise ScheduleError(f"unknown Infinity schedule {name!r}; choose one of {sorted(BUDGET_STEPS)} "
                            f"(or {sorted(BUDGET_ALIASES)})")
    return key


def infinity_grids(name: str = "1M", aspect_ratio: float = 1.0) -> tuple[tuple[int, int], ...]:
    """The grids (h, w) of schedule `name` at the template nearest `aspect_ratio`."""
    return TEMPLATES[template_ratio(aspect_ratio)][: BUDGET_STEPS[budget_name(name)]]


def rope_grid(aspect_ratio: float = 1.0) -> tuple[int, int]:
    """The grid RoPE positions are scaled to: the last grid of the template's 1M schedule."""
    return TEMPLATES[template_ratio(aspect_ratio)][-1]


def infinity_schedule(name: str = "1M", aspect_ratio: float = 1.0, patch_px: int = PATCH_PX) -> ScaleSchedule:
    """A varrl ScaleSchedule of Infinity's schedule `name` at `aspect_ratio` (height / width);
    `patch_px`: image pixels per token side (16 for every released tokenizer)."""
    grids = infinity_grids(name, aspect_ratio)
    hT, wT = grids[-1]
    step_px = None
    if hT != wT:
        step_px = tuple(h * patch_px for h, _ in TEMPLATES[1.0][: len(grids)])
    return ScaleSchedule(grids, hT * patch_px, image_width=None if hT == wT else wT * patch_px, step_px=step_px)


def schedule_name_of(grids: tuple[tuple[int, int], ...]) -> tuple[str, float]:
    """(budget, template ratio) of a released schedule; an error for any other list of grids."""
    for ratio, full in TEMPLATES.items():
        for name, n in BUDGET_STEPS.items():
            if tuple(full[:n]) == tuple(tuple(g) for g in grids):
                return name, ratio
    raise ScheduleError(f"grids {list(grids)} are not one of Infinity's released schedules")
