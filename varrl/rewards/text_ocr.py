"""The OCR text-rendering reward of arXiv 2601.02256 (Eq. 11-15): completeness + similarity - penalty.

Targets g_1..g_N are the words the prompt asks for; reads p_1..p_M with confidences s_i are what
the OCR engine found. All words are lower-cased.

    LD(x, y) = 1 - Lev(x, y) / (max(|x|, |y|) + 1e-8)
    Comp     = 1/N sum_g [g in P] min_{i: p_i = g} s_i         every target read exactly, weakest read counts
    Sim      = 1/N sum_g LD(g, p_i*) s_i*, i* = argmax_i LD(g, p_i)   partial credit for near misses
    Pen      = lam BagDist(cat(p), cat(g)) / (|cat(p)| + |cat(g)|)     junk, missing or repeated letters
    reward   = Comp + Sim - Pen

So a perfect read at confidence s scores 2s, and a blank image scores -lam.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz.distance import Levenshtein

from varrl.config_checks import at_least, check_ranges
from varrl.ocr import OcrConfig, OcrPool, OcrWord
from varrl.rewards.base import Pending, Reward, RewardResult, WordScore, check_inputs
from varrl.textmetrics import ned_similarity, quoted_words, word_hits

TERMS = ("comp", "sim", "pen", "reward", "word_acc", "ned")
_LD_EPS = 1e-8
# LD values closer than this are a tie for i*: the 1e-8 in LD's denominator makes equal ratios such as
# 1/4 and 2/8 differ by ~1e-9, while distinct ratios of words under 1000 letters differ by > 1e-6.
_TIE_TOL = 1e-6


def ld(x: str, y: str) -> float:
    """Normalised Levenshtein similarity of the paper: 1 for equal strings, 0 when nothing is shared."""
    return 1.0 - Levenshtein.distance(x, y) / (max(len(x), len(y)) + _LD_EPS)


def bag_distance(a: str, b: str) -> int:
    """Size of the symmetric difference of the two strings' character multisets."""
    ca, cb = Counter(a), Counter(b)
    return sum(abs(ca[c] - cb[c]) for c in ca.keys() | cb.keys())


@dataclass(frozen=True)
class WordTerm:
    """One target word's share of Comp and Sim (the image's Comp and Sim are their means over the
    target words), and the reads that decided it: the exact read whose confidence Comp took, and
    the closest read i* of Sim when it shares anything with the word (LD > 0)."""

    word: str
    comp: float
    sim: float
    reads: tuple[int, ...]
    closest: int | None = None
    """i*, the read Sim took (None: nothing read shares a letter with the word)"""


def word_terms(targets: list[str], reads: list[tuple[str, float]]) -> list[WordTerm]:
    """Comp and Sim of each target word (lower-cased, one entry per word, in order) against the reads."""
    p = [(text.lower(), float(s)) for text, s in reads]
    out = []
    for w in (t.lower() for t in targets):
        exact = [(s, k) for k, (text, s) in enumerate(p) if text == w]
        comp, k_comp = min(exact) if exact else (0.0, None)
        sim, k_sim = 0.0, None
        lds = [ld(w, text) for text, _ in p]
        if lds:  # nothing read: no partial credit
            best = max(lds)
            s_star, ld_star, k_sim = max((s, v, -k) for k, (v, (_, s)) in enumerate(zip(lds, p))
                                         if v >= best - _TIE_TOL)
            sim, k_sim = ld_star * s_star, -k_sim  # -k: among equal reads the first wins
            if ld_star <= _TIE_TOL:  # 1e-8 in LD leaves "nothing shared" a hair above 0
                k_sim = None
        out.append(WordTerm(w, comp, sim, tuple(sorted({k for k in (k_comp, k_sim) if k is not None})), k_sim))
    return out


def letter_scores(word: str, read: OcrWord | None) -> list[WordScore]:
    """One WordScore per letter of a target word (lower-cased), for letter-level credit.

    The word is aligned to the read that decided its Sim term (`read`; None: nothing read) by
    Levenshtein. A letter the read spells at its aligned place scores that character's own OCR
    confidence (the read's confidence when the engine gave no characters); a letter read as
    another character or not read at all scores 0. A letter's box is the box of the character it
    is aligned to (matched or substituted); a letter with no character across from it (deleted
    in the read, or no characters at all) has no box. Extra characters of the read score nothing."""
    word = word.lower()
    out = [WordScore(ch, 0.0, []) for ch in word]
    if read is None:
        return out
    text = read.text.lower()
    chars = read.chars if len(read.chars) == len(text) else ()
    for op in Levenshtein.opcodes(word, text):
        if op.tag not in ("equal", "replace"):
            continue
        for j, k in zip(range(op.src_start, op.src_end), range(op.dest_start, op.dest_end)):
            conf = chars[k].score if chars else read.score
            score = min(1.0, max(0.0, conf)) if op.tag == "equal" else 0.0
            out[j] = WordScore(word[j], score, [chars[k].box] if chars else [])
    return out


def text_ocr_terms(targets: list[str], reads: list[tuple[str, float]], lam: float = 0.6) -> dict[str, float]:
    """Comp, Sim, Pen and the reward for one image, plus word accuracy and NED for logging.

    targets: the words asked for (split on whitespace, lower-cased here); reads: (text, confidence)
    per OCR word. With no targets the reward does not apply and every value is NaN. Ties for the
    closest read in Sim go to the read with the higher confidence (the paper leaves them open)."""
    return _terms(targets, reads, lam)[0]


def _terms(targets: list[str], reads: list[tuple[str, float]], lam: float) -> tuple[dict[str, float], list[WordTerm]]:
    g = [w for t in targets for w in t.lower().split()]
    if not g:
        return dict.fromkeys(TERMS, math.nan), []
    p = [(text.lower(), float(s)) for text, s in reads]
    n = len(g)
    words = word_terms(g, p)
    comp = sum(t.comp for t in words) / n
    sim = sum(t.sim for t in words) / n

    cat_p, cat_g = "".join(text for text, _ in p), "".join(g)
    denom = len(cat_p) + len(cat_g)
    pen = lam * bag_distance(cat_p, cat_g) / denom if denom else 0.0

    texts = [text for text, _ in p]
    return {
        "comp": comp,
        "sim": sim,
        "pen": pen,
        "reward": comp + sim - pen,
        "word_acc": word_hits(g, texts) / n,
        "ned": sum(ned_similarity(w, texts) for w in g) / n,
    }, words


def target_words(prompt: str, meta: dict) -> list[str]:
    """meta["words"] when given (a list of words or one string), else the quoted words of the prompt."""
    words = meta.get("words")
    if words is None:
        return quoted_words(prompt)
    if isinstance(words, str):
        words = [words]  # a bare string would otherwise be iterated letter by letter
    return [w for phrase in words for w in str(phrase).lower().split()]


@dataclass
class TextOcrConfig:
    """Settings of the OCR text reward."""

    lam: float = 0.6
    """weight of the character bag-distance penalty (lambda in the paper)"""
    workers: int = 1
    """OCR worker processes (0: read in this process)"""
    ocr: OcrConfig = field(default_factory=OcrConfig)

    def __post_init__(self) -> None:
        check_ranges(self, {"lam": at_least(0), "workers": at_least(0, "(0: read in this process)")})


class TextOcrReward(Reward):
    """Reads each image with OCR and scores it against the prompt's quoted words.

    Images whose prompt asks for no text get NaN and are not sent to OCR at all (no reads, no boxes),
    so mixed batches pay for OCR only where the reward applies."""

    name = "text_ocr"
    per_word = True

    def __init__(self, config: TextOcrConfig | None = None):
        self.config = config or TextOcrConfig()
        self._pool: OcrPool | None = None

    def _ocr(self) -> OcrPool:
        # Created on first use: starting worker processes and loading the OCR models takes seconds.
        if self._pool is None:
            self._pool = OcrPool(self.config.ocr, self.config.workers)
        return self._pool

    def __call__(self, images_BHW3: np.ndarray, prompts: list[str], meta: list[dict]) -> RewardResult:
        return self.submit(images_BHW3, prompts, meta).result()

    def submit(self, images_BHW3: np.ndarray, prompts: list[str], meta: list[dict]) -> Pending:
        B = check_inputs(images_BHW3, prompts, meta)
        targets = [target_words(p, m) for p, m in zip(prompts, meta)]
        todo = [i for i in range(B) if targets[i]]
        # Copies: the pool pickles images from a background thread after submit returns, and the
        # caller may refill its batch buffer before that.
        handle = self._ocr().submit([images_BHW3[i].copy() for i in todo]) if todo else []
        return Pending(lambda: self._score(B, targets, todo, OcrPool.result(handle)))

    def _score(self, B: int, targets: list[list[str]], todo: list[int], reads: list[list[OcrWord]]) -> RewardResult:
        words: list[list[OcrWord]] = [[] for _ in range(B)]
        for i, r in zip(todo, reads):
            words[i] = r
        # Confidences are clipped to [0, 1], the range the formulas assume, against engine rounding.
        both = [_terms(t, [(w.text, min(1.0, max(0.0, w.score))) for w in ws], self.config.lam)
                for t, ws in zip(targets, words)]
        terms = [t for t, _ in both]
        per_word = [[WordScore(wt.word, wt.comp + wt.sim, [ws[k].box for k in wt.reads],
                               tuple(letter_scores(wt.word, None if wt.closest is None else ws[wt.closest])))
                     for wt in wts]
                    for ws, (_, wts) in zip(words, both)]
        return RewardResult(
            scores=np.array([t["reward"] for t in terms]),
            boxes=[[w.box for w in ws] for ws in words],
            components={k: np.array([t[k] for t in terms]) for k in TERMS if k != "reward"},
            texts=[[w.text for w in ws] for ws in words],
            words=per_word,
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
