"""Which stage (VMR prefix or suffix) each update trains: fine alternation (3 prefix, 1 suffix,
repeated), coarse (all prefix updates, then all suffix updates, 3:1 of the budget) or a custom
"a:b" pattern. A pure function of the update index, so resume restores the position for free."""

from __future__ import annotations

from typing import Literal

Stage = Literal["prefix", "suffix"]


def parse_alternation(alternation: str) -> tuple[str, int, int]:
    """-> (kind, a, b): kind 'cycle' (a prefix then b suffix, repeated) or 'blocks' (coarse)."""
    if alternation == "fine":
        return "cycle", 3, 1
    if alternation == "coarse":
        return "blocks", 3, 1
    parts = alternation.split(":")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        a, b = (int(p) for p in parts)
        if a + b > 0:
            return "cycle", a, b
    raise ValueError(f"rl.alternation must be 'fine', 'coarse' or 'a:b' (e.g. '3:1', '1:1'), got {alternation!r}")


def stage_at(update: int, alternation: str, total_updates: int) -> Stage:
    """The stage of 0-based update `update` out of `total_updates`."""
    kind, a, b = parse_alternation(alternation)
    if kind == "cycle":
        return "prefix" if update % (a + b) < a else "suffix"
    n_prefix = round(total_updates * a / (a + b))
    return "prefix" if update < n_prefix else "suffix"


def stage_plan(alternation: str, total_updates: int) -> list[Stage]:
    return [stage_at(u, alternation, total_updates) for u in range(total_updates)]
