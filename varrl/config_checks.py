"""Valid ranges of config values, checked when a config is built.

A value out of range is a `FieldError` naming the key (`config key 'rl.mp.threshold' must be in
(0, 1], got 2`), so a run never starts on a setting that silently changes or switches off part of
the objective. NaN and infinities are out of every range. Each config dataclass lists its ranges
in its `__post_init__`:

    check_ranges(self, {"lr": positive, "betas": Range(0, 1, hi_open=True), "warmup": at_least(0)})

A tuple or list field is checked item by item (`betas[1]`); None (an optional field left unset)
is always accepted."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from varrl.config_types import FieldError


@dataclass(frozen=True)
class Range:
    """lo <= value <= hi (strict where *_open); None: unbounded on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""
    """appended to the error, e.g. '(0: no clipping)'"""

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return "a finite number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def at_least(lo: float, note: str = "") -> Range:
    return Range(lo, note=note)


positive = Range(0, lo_open=True)
"""> 0 and finite"""
finite = Range()
"""any finite number"""
probability = Range(0, 1)
SEED_LIMIT = 2**32
seed_range = Range(0, SEED_LIMIT, hi_open=True, note="(seeds are scaled and offset per rank and batch, so they "
                                                     "must stay well inside the generators' 64-bit range)")


def check_ranges(obj: Any, ranges: Mapping[str, Range]) -> None:
    """Raise FieldError for the first field of `obj` whose value (or item) is outside its range."""
    for name, rng in ranges.items():
        value = getattr(obj, name)
        items = list(enumerate(value)) if isinstance(value, (tuple, list)) else [(None, value)]
        for i, v in items:
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue  # None is "unset"; a wrong type is from_dict's error, with the expected type
            if not rng.holds(v):
                key = name if i is None else f"{name}[{i}]"
                note = f" {rng.note}" if rng.note else ""
                raise FieldError(key, f"must be {rng.describe()}, got {v!r}{note}")


def check_choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    """A string field that must be one of `choices` (for fields typed str, not Literal)."""
    value = getattr(obj, name)
    if value not in choices:
        raise FieldError(name, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def check_device_name(obj, name: str) -> None:
    """A torch device string ('cpu', 'cuda', 'cuda:1', 'mps', 'auto'); whether the machine has it is
    checked when a run starts (a saved config must still load on another machine)."""
    value = getattr(obj, name)
    if value == "auto":
        return
    import torch  # lazily: configs load without importing torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise FieldError(name, f"must be a torch device such as 'cpu', 'cuda', 'cuda:1' or 'auto', "
                               f"got {value!r}") from None
