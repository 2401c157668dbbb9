"""The scale schedule of a next-scale model: which token grid each step emits.

Convention used everywhere in varrl: steps are numbered 1..T in user-facing text and configs
("step m"), and 0..T-1 as Python indices. Step t (1-based) emits grid t of size h_t x w_t.
A prefix of length m holds grids 1..m; `ScaleSchedule.step_at_resolution(px)` names the step
whose grid first reaches a pixel resolution (e.g. the paper's m_256).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class ScaleSchedule:
    """Grid sizes (h, w) for every step, coarse to fine, and the image size they decode to."""

    grids: tuple[tuple[int, int], ...]
    image_size: int  # pixels of the square image the last grid decodes to (its height when not square)
    image_width: int | None = None
    """pixels across the image when it is not square (None: image_size)"""
    step_px: tuple[int, ...] | None = None
    """the nominal pixel side of each step, where grid sides do not say it (non-square Infinity
    schedules name step t by the side of the square schedule's grid t, whose area it matches);
    None: h_t * image_size / h_T"""

    def __post_init__(self) -> None:
        if not self.grids:
            raise ValueError("ScaleSchedule needs at least one grid")
        for (h0, w0), (h1, w1) in zip(self.grids, self.grids[1:]):
            if h1 < h0 or w1 < w0:
                raise ValueError(f"grids must grow coarse to fine, got {(h0, w0)} before {(h1, w1)}")
        hT, wT = self.grids[-1]
        if self.image_size % hT or self.width_px % wT:
            raise ValueError(f"image size {self.image_size}x{self.width_px} is not a multiple of the last grid "
                             f"{hT}x{wT}")
        if self.step_px is not None and len(self.step_px) != len(self.grids):
            raise ValueError(f"step_px names {len(self.step_px)} steps but there are {len(self.grids)} grids")

    @classmethod
    def square(cls, sides: tuple[int, ...] | list[int], image_size: int) -> ScaleSchedule:
        return cls(tuple((int(s), int(s)) for s in sides), int(image_size))

    @property
    def width_px(self) -> int:
        return self.image_size if self.image_width is None else self.image_width

    @property
    def num_steps(self) -> int:
        return len(self.grids)

    @cached_property
    def tokens_per_step(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.grids)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start of each step's tokens in the flattened sequence; offsets[T] == total tokens."""
        out = [0]
        for n in self.tokens_per_step:
            out.append(out[-1] + n)
        return tuple(out)

    @property
    def total_tokens(self) -> int:
        return self.offsets[-1]

    @property
    def final_grid(self) -> tuple[int, int]:
        return self.grids[-1]

    def resolution(self, step: int) -> int:
        """Pixel side that grid `step` (1-based) corresponds to: grid side x pixels per final cell
        (or the schedule's own `step_px`)."""
        self._check_step(step)
        if self.step_px is not None:
            return self.step_px[step - 1]
        h, _ = self.grids[step - 1]
        return h * self.image_size // self.final_grid[0]

    def step_at_resolution(self, px: int) -> int:
        """The first step (1-based) whose grid reaches `px` pixels; an error if none does exactly."""
        for t in range(1, self.num_steps + 1):
            if self.resolution(t) >= px:
                if self.resolution(t) != px:
                    raise ValueError(
                        f"no step reaches exactly {px}px; resolutions are "
                        f"{[self.resolution(s) for s in range(1, self.num_steps + 1)]}"
                    )
                return t
        raise ValueError(f"{px}px exceeds the final resolution {self.resolution(self.num_steps)}px")

    def step_at_side(self, side: int) -> int:
        """The step (1-based) whose grid is side x side."""
        for t, (h, w) in enumerate(self.grids, start=1):
            if h == side and w == side:
                return t
        raise ValueError(f"no grid of side {side}; sides are {[h for h, _ in self.grids]}")

    def resolve_step(self, spec: int | str) -> int:
        """A step given as a count (`12`), a resolution (`'64px'`) or a grid side (`'8x8'`)."""
        if isinstance(spec, int) and not isinstance(spec, bool):
            self._check_step(spec)
            return spec
        text = str(spec).strip().lower()
        if m := re.fullmatch(r"(\d+)px", text):
            return self.step_at_resolution(int(m.group(1)))
        if m := re.fullmatch(r"(\d+)x(\d+)", text):
            if m.group(1) != m.group(2):
                raise ValueError(f"only square grids can be named, got {spec!r}")
            return self.step_at_side(int(m.group(1)))
        if text.isdigit():
            return self.resolve_step(int(text))
        raise ValueError(f"cannot read step {spec!r}: give a step count (12), a resolution ('64px') or a grid ('8x8')")

    def step_of_token(self) -> list[int]:
        """0-based step index of every flattened token position."""
        return [t for t, n in enumerate(self.tokens_per_step) for _ in range(n)]

    def _check_step(self, step: int) -> None:
        if not 1 <= step <= self.num_steps:
            raise ValueError(f"step {step} is outside 1..{self.num_steps}")
