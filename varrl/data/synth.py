"""Deterministic synthetic text renderings: images with known words, boxes and prompts.

Every sample is a pure function of (config, split, index): the same call gives the same pixels
on any machine, because fonts come from the matplotlib wheel (DejaVu TrueType files) rather than
from whatever the system has installed.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Named colours, so that prompts can say what the image shows.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20), "white": (245, 245, 245), "red": (210, 35, 35), "green": (35, 150, 60),
    "blue": (40, 70, 200), "yellow": (240, 215, 40), "orange": (240, 130, 30), "purple": (130, 50, 160),
    "pink": (240, 140, 180), "brown": (120, 75, 40), "gray": (128, 128, 128), "cyan": (40, 190, 210),
    "navy": (20, 30, 90), "beige": (225, 210, 170),
}
TEMPLATES = (
    "the text {words} in {fg} on a {bg} background",
    "a {bg} poster with the words {words} written in {fg}",
    "{fg} letters spelling {words} on {bg}",
    "a {bg} sign that says {words} in {fg}",
)
ALL_FONTS = (
    "DejaVuSans-Bold", "DejaVuSans", "DejaVuSerif-Bold", "DejaVuSerif", "DejaVuSansMono-Bold",
    "DejaVuSansMono", "DejaVuSans-Oblique", "DejaVuSerif-Italic", "cmss10", "cmb10",
)
REGION_BINS = ("1", "2", "3", "4", "5", ">5")
MIN_INK_PX = 12  # every word is at least this tall (ink box), so OCR can read it


@dataclass
class SynthConfig:
    """What the synthetic renderer draws."""

    image_size: int = 128
    region_mix: dict[str, float] = field(default_factory=lambda: {"1": 0.3, "2": 0.3, "3": 0.2, "4": 0.1, "5": 0.1})
    """probability of each region-count bin: keys '1'..'5' and '>5' (6..max_regions)"""
    max_regions: int = 8
    fonts: tuple[str, ...] = ALL_FONTS
    cap_px: tuple[int, int] = (12, 26)
    """range of capital-letter height in pixels (>= 12 keeps glyphs readable by OCR)"""
    word_len: tuple[int, int] = (3, 8)
    case: Literal["upper", "lower", "title", "mixed"] = "mixed"
    background: Literal["plain", "gradient", "noise", "mixed"] = "mixed"
    layout: Literal["random", "center", "cells"] = "random"
    """random: words anywhere that fits; center: word i of n centred on row i of n equal rows;
    cells: word i of n on row i of n, left-aligned, one character per `cell_px`-wide cell (the
    easiest layout to learn on a CPU budget: character j of a word always lands on the same token
    columns)"""
    cell_px: int = 16
    """width of a character cell in the `cells` layout (a multiple of the tokenizer's 8 px patch
    keeps every character on its own token columns)"""
    templates: tuple[str, ...] = TEMPLATES
    """prompt templates with {words}, {fg} and {bg}; one template whose {words} comes first keeps
    every character at a fixed prompt position"""
    min_contrast: float = 0.35
    """minimum luminance difference between text and background colours (0..1)"""
    heldout_every: int = 10
    """every n-th word of the list is reserved for the held-out split (0: no reserved words)"""

    def __post_init__(self) -> None:
        from varrl.config_checks import at_least, check_ranges, probability

        check_ranges(self, {"image_size": at_least(16), "max_regions": at_least(1), "cap_px": at_least(1),
                            "word_len": at_least(1), "cell_px": at_least(1), "min_contrast": probability,
                            "heldout_every": at_least(0, "(0: no reserved words)")})
        for name in ("cap_px", "word_len"):
            lo, hi = getattr(self, name)
            if lo > hi:
                from varrl.config_types import FieldError

                raise FieldError(name, f"is a range [low, high] with low <= high, got {[lo, hi]}")
        bad_p = {k: v for k, v in self.region_mix.items() if not (math.isfinite(v) and v >= 0)}
        if bad_p:
            raise ValueError(f"region_mix probabilities must be finite and >= 0, got {bad_p}")
        bad = [k for k in self.region_mix if k not in REGION_BINS]
        if bad:
            raise ValueError(f"region_mix keys must be among {REGION_BINS}, got {bad}")
        if sum(self.region_mix.values()) <= 0:
            raise ValueError("region_mix needs a positive total probability")
        if self.cap_px[0] < 12:
            raise ValueError(f"cap_px starts at {self.cap_px[0]}px; OCR needs glyphs of at least 12px")
        if not self.templates:
            raise ValueError("templates is empty: give at least one prompt template with {words}")
        for t in self.templates:
            if "{words}" not in t:
                raise ValueError(f"prompt template {t!r} has no {{words}} field")
        if self.layout == "cells" and self.cell_px * (self.word_len[0] + 1) > self.image_size:
            raise ValueError(f"cell_px={self.cell_px} leaves no room for {self.word_len[0]}-letter words in a "
                             f"{self.image_size}px image; lower cell_px or word_len")


@dataclass
class SynthSample:
    image: np.ndarray  # uint8 [H, W, 3]
    prompt: str
    words: list[str]
    boxes: list[tuple[int, int, int, int]]  # (x0, y0, x1, y1) pixel ink box of each word
    n_regions: int


def font_dir() -> str:
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


@lru_cache(maxsize=512)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = os.path.join(font_dir(), name + ".ttf")
    if not os.path.exists(path):
        raise ValueError(f"font {name!r} not found in {font_dir()}; choose among {ALL_FONTS}")
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=4)
def word_list(split: str = "all", heldout_every: int = 10) -> tuple[str, ...]:
    text = resources.files("varrl").joinpath("assets/words.txt").read_text()
    words = [w for w in text.split("\n") if w and not w.startswith("#")]
    if split == "all" or heldout_every <= 0:
        return tuple(words)
    held = [w for i, w in enumerate(words) if i % heldout_every == heldout_every - 1]
    train = [w for i, w in enumerate(words) if i % heldout_every != heldout_every - 1]
    if split == "heldout":
        return tuple(held)
    if split == "train":
        return tuple(train)
    raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


def sample_seed(split: str, index: int, seed: int = 0) -> int:
    """A stable 63-bit seed per (split, index, seed): independent of Python's hash randomisation."""
    digest = hashlib.sha256(f"{split}/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def luminance(rgb: tuple[int, int, int]) -> float:
    r, g, b = (c / 255.0 for c in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


def quote_words(words: list[str]) -> str:
    quoted = [f'"{w}"' for w in words]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


class SynthGenerator:
    """`gen.sample(index)` is the index-th sample of a split; identical across runs and machines."""

    def __init__(self, config: SynthConfig | None = None, split: str = "train", seed: int = 0):
        self.config = config or SynthConfig()
        self.split, self.seed = split, seed
        lo, hi = self.config.word_len
        self.words = [w for w in word_list(split, self.config.heldout_every) if lo <= len(w) <= hi]
        if not self.words:
            raise ValueError(f"no words of length {lo}..{hi} in the {split} split")
        self._short = [w for w in self.words if len(w) <= lo + 1]
        self._bins = list(self.config.region_mix)
        self._probs = [self.config.region_mix[k] for k in self._bins]

    def sample(self, index: int) -> SynthSample:
        rng = random.Random(sample_seed(self.split, index, self.seed))
        cfg = self.config
        n_target = self._draw_region_count(rng)
        fg_name, bg_name = self._draw_colours(rng)
        canvas = self._background(rng, PALETTE[bg_name])
        draw = ImageDraw.Draw(canvas)
        font_name = rng.choice(cfg.fonts)
        words: list[str] = []
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(n_target):
            placed = self._place_word(rng, draw, font_name, boxes, n_target)
            if placed is None:
                break  # the canvas is full: fewer regions than asked, recorded truthfully
            word, box, pos, font = placed
            fill = self._jitter(rng, PALETTE[fg_name])
            if isinstance(pos, list):  # the cells layout places every character itself
                for ch, p in zip(word, pos):
                    draw.text(p, ch, font=font, fill=fill)
            else:
                draw.text(pos, word, font=font, fill=fill)
            words.append(word)
            boxes.append(box)
        if not words:
            lo = self.config.cap_px[0]
            raise ValueError(f"no word fits a {cfg.image_size}px image at {lo}px capitals in font {font_name}; "
                             "lower cap_px or word_len, or raise image_size")
        template = rng.choice(cfg.templates)
        prompt = template.format(words=quote_words(words), fg=fg_name, bg=bg_name)
        return SynthSample(np.asarray(canvas, dtype=np.uint8), prompt, words, boxes, len(words))

    def _draw_region_count(self, rng: random.Random) -> int:
        b = rng.choices(self._bins, weights=self._probs)[0]
        if b == ">5":
            return rng.randint(6, max(6, self.config.max_regions))
        return int(b)

    def _draw_colours(self, rng: random.Random) -> tuple[str, str]:
        names = list(PALETTE)
        while True:
            fg, bg = rng.choice(names), rng.choice(names)
            if abs(luminance(PALETTE[fg]) - luminance(PALETTE[bg])) >= self.config.min_contrast:
                return fg, bg

    @staticmethod
    def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int = 12) -> tuple[int, int, int]:
        return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]

    def _background(self, rng: random.Random, rgb: tuple[int, int, int]) -> Image.Image:
        size = self.config.image_size
        kind = self.config.background
        if kind == "mixed":
            kind = rng.choice(["plain", "plain", "gradient", "noise"])
        base = np.array(self._jitter(rng, rgb), dtype=np.float32)
        img = np.broadcast_to(base, (size, size, 3)).copy()
        if kind == "gradient":
            ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
            ramp = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
            img += (rng.uniform(10, 30) * ramp)[..., None]
        elif kind == "noise":
            nrng = np.random.default_rng(rng.getrandbits(32))
            img += nrng.normal(0.0, 8.0, size=(size, size, 1)).astype(np.float32)
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))

    def _case(self, rng: random.Random, word: str) -> str:
        mode = self.config.case if self.config.case != "mixed" else rng.choice(["upper", "lower", "title"])
        return {"upper": word.upper(), "lower": word.lower(), "title": word.title()}[mode]

    def _place_word(self, rng, draw, font_name, boxes, n_target: int):
        """Try words/sizes/positions; return (word, ink box, draw position, font) or None.

        Later attempts use smaller capitals and, in the second half, short words, so that a busy
        canvas still takes the number of regions its bin asks for."""
        size = self.config.image_size
        margin = 2
        lo, hi = self.config.cap_px
        hi = max(lo, round(hi - (hi - lo) * min(1.0, (n_target - 1) / 6)))  # many regions: smaller text
        attempts = 80
        for a in range(attempts):
            pool = self._short if a >= attempts // 2 and self._short else self.words
            word = self._case(rng, rng.choice(pool))
            cap = rng.randint(lo, max(lo, round(hi - (hi - lo) * a / attempts)))
            font = self._font_for_cap(font_name, cap)
            if self.config.layout == "cells":
                placed = self._place_cells(draw, word, font, len(boxes), n_target, margin)
                if placed is not None:
                    return placed
                continue
            x0, y0, x1, y1 = draw.textbbox((0, 0), word, font=font)
            w, h = x1 - x0, y1 - y0
            if w > size - 2 * margin or h > size - 2 * margin or h < MIN_INK_PX:
                continue
            if self.config.layout == "center":
                row_mid = size * (2 * len(boxes) + 1) // (2 * n_target)
                px, py = (size - w) // 2 - x0, row_mid - h // 2 - y0
            else:
                px = rng.randint(margin, size - margin - w) - x0
                py = rng.randint(margin, size - margin - h) - y0
            box = (px + x0, py + y0, px + x1, py + y1)
            if all(not _overlap(box, b, margin) for b in boxes):
                return word, box, (px, py), font
        return None

    def _place_cells(self, draw, word: str, font, row: int, n_rows: int, margin: int):
        """Left-aligned word with character j centred in cell j (x from cell_px*(j+1)), its capitals
        centred on row `row` of `n_rows`. Returns (word, ink box, per-character positions, font)."""
        size, cell = self.config.image_size, self.config.cell_px
        if cell * (len(word) + 1) > size - margin:
            return None
        _, top, _, bottom = font.getbbox("H")
        row_mid = size * (2 * row + 1) // (2 * n_rows)
        py = row_mid - (top + bottom) // 2
        positions, ink = [], []
        for j, ch in enumerate(word):
            x0, y0, x1, y1 = draw.textbbox((0, 0), ch, font=font)
            px = cell * (j + 1) + (cell - (x1 - x0)) // 2 - x0
            positions.append((px, py))
            ink.append((px + x0, py + y0, px + x1, py + y1))
        box = (min(b[0] for b in ink), min(b[1] for b in ink), max(b[2] for b in ink), max(b[3] for b in ink))
        if box[1] < margin or box[3] > size - margin or box[3] - box[1] < MIN_INK_PX:
            return None
        return word, box, positions, font

    @staticmethod
    @lru_cache(maxsize=256)
    def _font_for_cap(font_name: str, cap: int) -> ImageFont.FreeTypeFont:
        # Font size is in em units; scale so that a capital "H" is `cap` pixels tall.
        probe = load_font(font_name, 100)
        _, top, _, bottom = probe.getbbox("H")
        return load_font(font_name, max(6, round(cap * 100 / (bottom - top))))


def _overlap(a, b, margin: int) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])
