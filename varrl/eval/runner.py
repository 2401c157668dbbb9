"""Running an image benchmark: generate (or load) one image per prompt, OCR it in worker processes,
score CLIPScore in this process meanwhile, and pool the metrics (varrl.eval.cvtg)."""

from __future__ import annotations

import sys
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from varrl.eval.cvtg import CvtgItem, ItemScore, find_image
from varrl.ocr import OcrPool
from varrl.policy.sampler import SamplerConfig
from varrl.textmetrics import word_stats
from varrl.viz import to_uint8

CLIP_HINT = ("pass --clip-model with a local directory holding a transformers CLIPModel and its processor "
             "(CLIPModel.save_pretrained) or a hub id such as openai/clip-vit-large-patch14 where the network allows")

Chunk = tuple[list[CvtgItem], list[np.ndarray]]


def fit_prompt(prompt: str, check: Callable[[list[str]], None]) -> str:
    """`prompt` if the model takes it, else its ASCII transliteration, else the longest word-boundary
    prefix of that which `check` (the policy's check_prompts) accepts: a long benchmark prompt is
    truncated for a small text encoder, as CLIP-style encoders truncate at their context length."""
    try:
        check([prompt])
        return prompt
    except ValueError:
        pass
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    text = " ".join(text.split()) or "?"
    try:
        check([text])
        return text
    except ValueError:
        pass
    lo, hi = 0, len(text)  # invariant: text[:lo] is accepted (or lo == 0), text[:hi + 1] is not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            check([text[:mid]])
            lo = mid
        except ValueError:
            hi = mid - 1
    cut = text[:lo]
    if " " in cut and lo < len(text) and text[lo] != " ":
        cut = cut[: cut.rfind(" ")]  # do not end on half a word
    if not cut.strip():
        raise ValueError(f"the model accepts no prefix of the prompt {prompt[:60]!r}")
    return cut.rstrip()


@dataclass
class GenerationLog:
    truncated: list[str] = field(default_factory=list)
    """keys of the items whose prompt had to be shortened or transliterated for the model"""


@torch.no_grad()
def generate_chunks(policy, items: list[CvtgItem], out_dir: Path, sampler: SamplerConfig, seed: int,
                    batch: int, log: GenerationLog) -> Iterator[Chunk]:
    """Sample one image per item, save it as out_dir/{subset}/{N}/{index}.png and yield (items, images)
    per batch. Batch b draws its noise from seed*1_000_003 + b, so a shorter --limit gives a prefix of
    the same images."""
    prompts = []
    for it in items:
        p = fit_prompt(it.prompt, policy.check_prompts)
        if p != it.prompt:
            log.truncated.append(it.key)
        prompts.append(p)
    for b, start in enumerate(range(0, len(items), batch)):
        chunk = items[start: start + batch]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)
        traj = policy.rollout(prompts[start: start + batch], n=1, sampler=sampler, generator=gen)
        images = list(to_uint8(policy.decode(traj)))
        for it, img in zip(chunk, images):
            path = out_dir / f"{it.key}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
        yield chunk, images


def read_image(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB; raises OSError or ValueError for a file that is not a readable image."""
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


@dataclass
class LoadLog:
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def load_chunks(items: list[CvtgItem], images_dir: Path, batch: int, log: LoadLog) -> Iterator[Chunk]:
    """Existing images of the items (any generator, same layout), in batches; items whose image is
    missing or unreadable are left out and recorded in `log`."""
    chunk: list[CvtgItem] = []
    images: list[np.ndarray] = []
    for it in items:
        path = find_image(images_dir, it)
        if path is None:
            log.missing.append(it.key)
            continue
        try:
            img = read_image(path)
        except (OSError, ValueError, Image.DecompressionBombError):
            log.unreadable.append(it.key)
            continue
        chunk.append(it)
        images.append(img)
        if len(chunk) == batch:
            yield chunk, images
            chunk, images = [], []
    if chunk:
        yield chunk, images


def load_clip(spec: str | None, device: str = "cpu"):
    """(scorer, None) or (None, why not): a missing CLIP model leaves clip_score null, never fails the run."""
    if not spec or spec.lower() == "none":
        return None, f"no CLIP model given: clip_score is null; {CLIP_HINT}"
    try:
        from varrl.rewards.clip_score import ClipScorer, ClipUnavailable
    except ImportError as e:
        return None, f"CLIPScore is not available in this install ({e}): clip_score is null"
    try:
        return ClipScorer.load(spec, device=device), None
    except (ClipUnavailable, ImportError) as e:
        return None, f"{e} (clip_score is null; {CLIP_HINT})"


def score_chunks(chunks: Iterable[Chunk], total: int, ocr: OcrPool, clip=None, desc: str = "scoring",
                 in_flight: int = 4, failed: list[str] | None = None) -> list[ItemScore]:
    """OCR every chunk in the pool's workers while the next chunk is made or loaded; CLIPScore (when
    `clip` is given) runs here meanwhile. At most `in_flight` chunks wait for OCR at once, which bounds
    memory on large images. Returns one ItemScore per image, in order; an image the OCR engine fails
    on (e.g. 4000x10 pixels) is left out and its key added to `failed`, so one odd file does not end
    a long evaluation (failed=None: the engine's error ends it)."""
    window: deque = deque()
    out: list[ItemScore] = []
    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)

    def collect_oldest() -> None:
        items, handle, clips = window.popleft()
        for it, words, c in zip(items, OcrPool.result_each(handle), clips):
            if isinstance(words, Exception):
                if failed is None:
                    raise words
                failed.append(it.key)
                continue
            reads = [w.text for w in words]
            out.append(ItemScore(it, word_stats(it.words, reads), reads, c))
        bar.update(len(items))

    try:
        for items, images in chunks:
            handle = ocr.submit([np.ascontiguousarray(im) for im in images], keep_errors=failed is not None)
            clips = [None] * len(items)
            if clip is not None:
                clips = [float(s) for s in clip.score(images, [it.prompt for it in items])]
            window.append((items, handle, clips))
            while len(window) > in_flight:
                collect_oldest()
        while window:
            collect_oldest()
    finally:
        bar.close()
    return out
