"""Text-rendering metrics on OCR output: word accuracy and normalised edit distance (NED)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from rapidfuzz.distance import Levenshtein

_QUOTED = re.compile(r"\"([^\"]+)\"|'([^']+)'|\u201c([^\u201d]+)\u201d")


def quoted_words(prompt: str) -> list[str]:
    """Target words of a prompt: every quoted span ("..", '..' or curly), lower-cased, split on spaces."""
    words: list[str] = []
    for m in _QUOTED.finditer(prompt):
        span = next(g for g in m.groups() if g is not None)
        words += span.lower().split()
    return words


def word_hits(targets: Iterable[str], reads: Iterable[str]) -> int:
    """How many target words appear among the reads (exact, case-insensitive, position ignored)."""
    pool = {r.lower() for r in reads}
    return sum(t.lower() in pool for t in targets)


def ned_similarity(target: str, reads: Iterable[str]) -> float:
    """1 - Levenshtein / max length against the closest read; 0 when nothing was read."""
    best = 0.0
    t = target.lower()
    for r in reads:
        r = r.lower()
        best = max(best, 1.0 - Levenshtein.distance(t, r) / max(len(t), len(r), 1))
    return best
