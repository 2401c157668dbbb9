"""Text-rendering metrics on OCR output: word accuracy and normalised edit distance (NED).

The one implementation used everywhere: the OCR reward and the trainer's evaluations, the held-out
check, and the CVTG-2K benchmark (varrl.eval.cvtg).

Targets are the words inside quoted spans of a prompt. Straight double quotes and curly double
quotes pair with the next closing quote. Single quotes (straight ' or curly \u2018 \u2019) double as
apostrophes, so a single-quoted span follows one rule:
  - it opens at a quote that follows the start of the prompt, whitespace or opening punctuation
    ( ( [ { " \u201c / : , ; - ) and is followed by a non-space character;
  - it closes at the first later quote that follows a non-space character and comes before the
    end, whitespace or punctuation ( . , ; : ! ? ) ] } " \u201d / - ).
So in `a sign saying 'Don't Stop' here` the span is `Don't Stop` (the quote in Don't has a letter on
both sides: it neither opens nor closes), and in `the kids' sign 'FUN'` only `FUN` is a span. A
possessive at the end of a word inside a span (`'The Kids' Corner'`) closes the span early: such
prompts are ambiguous to any rule that reads quotes alone.

Words are whitespace-separated tokens (`split_words`, also how OCR lines become words), compared
lower-cased and exactly: punctuation is part of a word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from rapidfuzz.distance import Levenshtein

_OPEN_BEFORE = "(?<![^\\s(\\[{\"\u201c/:,;-])"  # start of text, whitespace or opening punctuation
_CLOSE_AFTER = "(?=[\\s.,;:!?)\\]}\"\u201d/-]|$)"  # end of text, whitespace or punctuation
_STYLE_PATTERNS = {
    "double": '"([^"]+)"',
    "curly": "\u201c([^\u201d]+)\u201d",
    "single": f"{_OPEN_BEFORE}'(\\S(?:.*?\\S)??)'{_CLOSE_AFTER}",
    "curly_single": f"{_OPEN_BEFORE}\u2018(\\S(?:.*?\\S)??)\u2019{_CLOSE_AFTER}",
}
ALL_QUOTES = ("double", "curly", "single", "curly_single")
SINGLE_QUOTES = ("single", "curly_single")
"""the quote styles of CVTG-2K prompts, whose target texts are single-quoted"""


@lru_cache(maxsize=8)
def _quote_regex(styles: tuple[str, ...]) -> re.Pattern:
    bad = [s for s in styles if s not in _STYLE_PATTERNS]
    if bad or not styles:
        raise ValueError(f"quote styles must be among {ALL_QUOTES}, got {list(styles)}")
    return re.compile("|".join(_STYLE_PATTERNS[s] for s in styles))


def split_words(text: str) -> list[str]:
    """Whitespace-separated tokens: how targets and OCR'd lines are cut into words."""
    return text.split()


def quoted_spans(prompt: str, styles: tuple[str, ...] = ALL_QUOTES) -> list[str]:
    """The quoted spans of a prompt, in order (see the module docstring for the quote rule)."""
    return [next(g for g in m.groups() if g is not None) for m in _quote_regex(tuple(styles)).finditer(prompt)]


def quoted_words(prompt: str, styles: tuple[str, ...] = ALL_QUOTES) -> list[str]:
    """Target words of a prompt: every quoted span, lower-cased, split on whitespace."""
    return [w for span in quoted_spans(prompt, styles) for w in split_words(span.lower())]


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


@dataclass(frozen=True)
class WordStats:
    """Sums over target words, so that images, prompts and subsets pool by simple addition."""

    n: int = 0
    """target words"""
    hits: int = 0
    """target words read exactly"""
    ned_sum: float = 0.0
    """sum over target words of ned_similarity"""

    def __add__(self, other: WordStats) -> WordStats:
        return WordStats(self.n + other.n, self.hits + other.hits, self.ned_sum + other.ned_sum)

    @property
    def word_acc(self) -> float | None:
        """Share of target words read exactly (None without targets)."""
        return self.hits / self.n if self.n else None

    @property
    def ned(self) -> float | None:
        """Mean NED similarity over target words (None without targets)."""
        return self.ned_sum / self.n if self.n else None


def word_stats(targets: Iterable[str], reads: Iterable[str]) -> WordStats:
    """WordStats of one image: targets are words or phrases (split on whitespace), reads OCR'd words."""
    words = [w for t in targets for w in split_words(t.lower())]
    reads = [r for line in reads for r in split_words(line)]
    return WordStats(len(words), word_hits(words, reads), sum(ned_similarity(w, reads) for w in words))
