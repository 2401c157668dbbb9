"""The reward interface: a batch of images with prompts in, one score per image out.

A reward may be slow (OCR, a reward model), so besides `__call__` it has `submit`, which may hand
the work off at once and return a `Pending`; the trainer submits, keeps sampling, and waits later.
NaN means "not applicable to this image" (e.g. a text reward for a prompt that asks for no text),
so combining rewards can skip it instead of treating it as zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class WordScore:
    """One target word's own score and where it was read, for region-level credit."""

    word: str
    score: float
    """the word's own reward (text_ocr: its Comp + Sim; the image's Comp + Sim is their mean)"""
    boxes: list[Box]
    """pixel boxes of the reads that decided the score (empty: nothing read for this word)"""
    letters: tuple[WordScore, ...] = ()
    """one WordScore per letter of the word, for letter-level credit (text_ocr: `letter_scores`);
    empty for rewards that score words only"""


@dataclass
class RewardResult:
    scores: np.ndarray
    """float64 [B]; NaN where the reward does not apply to that image"""
    boxes: list[list[Box]] | None = None
    """per image, the pixel boxes of what decided the reward; None when the reward has no regions"""
    components: dict[str, np.ndarray] = field(default_factory=dict)
    """named float [B] sub-scores, for logging"""
    texts: list[list[str]] | None = None
    """per image, the text that was read; None for rewards that read no text"""
    words: list[list[WordScore]] | None = None
    """per image, each target word's own score and boxes (rewards that decompose over words)"""

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        if self.scores.ndim != 1:
            raise ValueError(f"RewardResult.scores must be 1-D [B], got shape {self.scores.shape}")
        B = self.scores.shape[0]
        if self.boxes is not None:
            if len(self.boxes) != B:
                raise ValueError(f"RewardResult.boxes has {len(self.boxes)} entries for {B} images")
            for i, boxes in enumerate(self.boxes):
                bad = [b for b in boxes if len(b) != 4]
                if bad:
                    raise ValueError(f"RewardResult.boxes[{i}] holds boxes without 4 coordinates: {bad[:3]}")
        for key, value in list(self.components.items()):
            value_B = np.asarray(value, dtype=np.float64)
            if value_B.shape != (B,):
                raise ValueError(f"RewardResult component {key!r} has shape {value_B.shape}, expected ({B},)")
            self.components[key] = value_B
        if self.texts is not None and len(self.texts) != B:
            raise ValueError(f"RewardResult.texts has {len(self.texts)} entries for {B} images")
        if self.words is not None and len(self.words) != B:
            raise ValueError(f"RewardResult.words has {len(self.words)} entries for {B} images")

    def __len__(self) -> int:
        return len(self.scores)


class Pending:
    """A reward being computed: `result()` waits for it (once; later calls return the same result).

    Built from a ready RewardResult, or from a zero-argument callable that finishes the work."""

    def __init__(self, work: RewardResult | Callable[[], RewardResult]):
        if isinstance(work, RewardResult):
            self._result: RewardResult | None = work
            self._finish = None
        elif callable(work):
            self._result, self._finish = None, work
        else:
            raise TypeError(f"Pending takes a RewardResult or a zero-argument callable, got {type(work).__name__}")

    def result(self) -> RewardResult:
        if self._result is None:
            assert self._finish is not None
            result = self._finish()
            if not isinstance(result, RewardResult):
                raise TypeError(f"the reward's pending work returned {type(result).__name__}, not a RewardResult")
            self._result, self._finish = result, None  # drop the closure: it may hold the image batch
        return self._result


def check_inputs(images_BHW3: np.ndarray, prompts: list[str], meta: list[dict]) -> int:
    """Validate one reward call's arguments; return the batch size B."""
    if not isinstance(images_BHW3, np.ndarray):
        raise ValueError(f"images must be a numpy array, got {type(images_BHW3).__name__}")
    if images_BHW3.dtype != np.uint8 or images_BHW3.ndim != 4 or images_BHW3.shape[3] != 3:
        raise ValueError(f"images must be uint8 [B, H, W, 3], got {images_BHW3.dtype} {images_BHW3.shape}")
    B = images_BHW3.shape[0]
    if len(prompts) != B:
        raise ValueError(f"got {len(prompts)} prompts for {B} images")
    if len(meta) != B:
        raise ValueError(f"got {len(meta)} meta dicts for {B} images")
    bad = [i for i, m in enumerate(meta) if not isinstance(m, dict)]
    if bad:
        raise ValueError(f"meta must be one dict per image; entries {bad[:5]} are not dicts")
    return B


class Reward:
    """Base class of rewards. Subclasses implement `__call__`; slow ones also override `submit`."""

    name: str = "reward"
    per_word: bool = False
    """whether results carry `words` (each target word's own score and boxes: region credit)"""

    def __call__(self, images_BHW3: np.ndarray, prompts: list[str], meta: list[dict]) -> RewardResult:
        """Score a batch: uint8 [B, H, W, 3] images, one prompt and one meta dict per image."""
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def submit(self, images_BHW3: np.ndarray, prompts: list[str], meta: list[dict]) -> Pending:
        """Start scoring and return at once where the reward can; this default computes right away."""
        return Pending(self(images_BHW3, prompts, meta))

    def close(self) -> None:
        """Release workers or models; the default holds none."""

    def __enter__(self) -> Reward:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CombinedReward(Reward):
    """A weighted sum of rewards. Per image, the rewards whose score is NaN are left out of the sum,
    so a text reward that does not apply does not pull the total to zero; the total is NaN only
    when every reward is NaN for that image."""

    name = "combined"

    def __init__(self, rewards: list[tuple[Reward, float]]):
        if not rewards:
            raise ValueError("CombinedReward needs at least one (reward, weight) pair")
        names = [r.name for r, _ in rewards]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"reward names must be unique (they name the components), repeated: {dupes}")
        for r, w in rewards:
            if not math.isfinite(w):
                raise ValueError(f"weight of reward {r.name!r} must be finite, got {w}")
        self.rewards = [(r, float(w)) for r, w in rewards]
        self.per_word = any(r.per_word and w != 0 for r, w in self.rewards)

    def __call__(self, images_BHW3: np.ndarray, prompts: list[str], meta: list[dict]) -> RewardResult:
        return self.submit(images_BHW3, prompts, meta).result()

    def submit(self, images_BHW3: np.ndarray, prompts: list[str], meta: list[dict]) -> Pending:
        B = check_inputs(images_BHW3, prompts, meta)
        # Submit to every reward before waiting on any, so the asynchronous ones run side by side.
        pendings = [r.submit(images_BHW3, prompts, meta) for r, _ in self.rewards]
        return Pending(lambda: self._combine(B, [p.result() for p in pendings]))

    def _combine(self, B: int, results: list[RewardResult]) -> RewardResult:
        for (r, _), res in zip(self.rewards, results):
            if len(res) != B:
                raise ValueError(f"reward {r.name!r} returned {len(res)} scores for {B} images")
        scores_RB = np.stack([res.scores for res in results])
        weights_R1 = np.array([w for _, w in self.rewards])[:, None]
        valid_RB = ~np.isnan(scores_RB)
        total_B = np.where(valid_RB, weights_R1 * scores_RB, 0.0).sum(0)
        total_B[~valid_RB.any(0)] = np.nan
        components: dict[str, np.ndarray] = {}
        for (r, _), res in zip(self.rewards, results):
            components[r.name] = res.scores
            for key, value_B in res.components.items():
                components[f"{r.name}/{key}"] = value_B
        boxes = _concat_per_image(B, [res.boxes for res in results])
        texts = _concat_per_image(B, [res.texts for res in results])
        # Word scores carry their reward's weight; a reward of weight 0 only logs, so its words are left out.
        words = _concat_per_image(B, [None if res.words is None or w == 0 else
                                      [[weighted(x, w) for x in ws] for ws in res.words]
                                      for (_, w), res in zip(self.rewards, results)])
        return RewardResult(total_B, boxes, components, texts, words)

    def close(self) -> None:
        for r, _ in self.rewards:
            r.close()


def weighted(word: WordScore, w: float) -> WordScore:
    """A word's score, and its letters' scores, times its reward's weight."""
    return replace(word, score=w * word.score, letters=tuple(replace(c, score=w * c.score) for c in word.letters))


def _concat_per_image(B: int, lists: list[list[list] | None]) -> list[list] | None:
    """Per image, the concatenation over rewards of their per-image lists; None if no reward has any."""
    present = [x for x in lists if x is not None]
    if not present:
        return None
    return [[item for x in present for item in x[i]] for i in range(B)]
