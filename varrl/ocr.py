"""OCR behind one small interface: image -> words with confidences and pixel boxes.

The engine is RapidOCR 3.x on onnxruntime with its default PP-OCR models, which ship inside the
PyPI wheel, so nothing is downloaded. One intra-op thread per engine: parallelism comes from
running several engines in worker processes, which scales better on small images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from varrl.stop import PARENT_POLL_S, exit_with_parent  # noqa: F401 (PARENT_POLL_S: the workers' poll)
from varrl.textmetrics import split_words


@dataclass(frozen=True)
class OcrChar:
    """One recognised character: the recogniser's own confidence in it, and the columns of the text
    line its CTC frames cover (so its box follows where it was drawn, not an even split)."""

    text: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class OcrWord:
    text: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    chars: tuple[OcrChar, ...] = ()
    """the word's characters in order, one per character of `text`; empty when the engine's
    character read-out did not line up with the text"""


@dataclass
class OcrConfig:
    """Settings of the OCR engine."""

    det_side: int = 320
    """images are resized so their shorter side is this many pixels before text detection"""
    min_score: float = 0.1
    """reads below this recognition confidence are dropped"""
    threads: int = 1
    use_cls: bool = False
    """run the 180-degree text-orientation classifier (off: rendered text is upright)"""

    def __post_init__(self) -> None:
        from varrl.config_checks import Range, at_least, check_ranges

        check_ranges(self, {"det_side": at_least(8), "min_score": Range(0, 1, hi_open=True), "threads": at_least(1)})


class OcrEngine:
    def __init__(self, config: OcrConfig | None = None):
        self.config = config or OcrConfig()
        try:
            from rapidocr import RapidOCR
        except ImportError as e:  # pragma: no cover - rapidocr is a hard dependency
            raise ImportError("OCR needs rapidocr and onnxruntime: pip install 'rapidocr>=3' onnxruntime") from e
        c = self.config
        self._engine = RapidOCR(params={
            "Global.log_level": "error",
            "Global.text_score": c.min_score,
            "Global.use_cls": c.use_cls,
            "Det.limit_side_len": c.det_side,
            "Det.limit_type": "min",
            "EngineConfig.onnxruntime.intra_op_num_threads": c.threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            # Per-character boxes and confidences come from the recogniser's CTC frames of the same
            # pass: no extra model runs, and the reads stay the same (tested).
            "Global.return_word_box": True,
            "Global.return_single_char_box": True,
        })

    def __call__(self, image: np.ndarray) -> list[OcrWord]:
        """Read one uint8 [H, W, 3] RGB image; one OcrWord per whitespace-separated word."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"OCR expects a uint8 HxWx3 RGB array, got {image.dtype} {image.shape}")
        # RapidOCR treats arrays as BGR (OpenCV order); flip so colours reach it as drawn.
        out = self._engine(np.ascontiguousarray(image[:, :, ::-1]))
        if out is None or out.txts is None:
            return []
        words: list[OcrWord] = []
        per_line = getattr(out, "word_results", None) or [()] * len(out.txts)
        for text, score, quad, line_chars in zip(out.txts, out.scores, out.boxes, per_line):
            quad = np.asarray(quad, dtype=np.float64)
            x0, y0 = quad.min(0)
            x1, y1 = quad.max(0)
            parts = split_words(text)  # the metrics' own tokenisation
            if not parts:
                continue
            # A line with several words: split its box in proportion to character counts.
            total = sum(len(p) for p in parts) + len(parts) - 1
            cursor = 0
            chars = line_characters(parts, line_chars)
            for p in parts:
                a = x0 + (x1 - x0) * cursor / total
                b = x0 + (x1 - x0) * (cursor + len(p)) / total
                words.append(OcrWord(p, float(score), (float(a), float(y0), float(b), float(y1)),
                                     tuple(chars[:len(p)])))
                chars = chars[len(p):]
                cursor += len(p) + 1
        return words


def line_characters(parts: list[str], line_chars) -> list[OcrChar]:
    """The engine's characters of one line as OcrChars, in the order of the line's words (`parts`).

    The engine lists the line's non-space characters as (text, confidence, quad); when they do not
    spell `parts` one for one (a multi-character item, a count that differs), no word of the line
    gets characters rather than letters paired with the wrong boxes."""
    out = []
    for item in line_chars or ():
        text, conf, quad = item
        q = np.asarray(quad, dtype=np.float64)
        (cx0, cy0), (cx1, cy1) = q.min(0), q.max(0)
        out.append(OcrChar(str(text), float(conf), (float(cx0), float(cy0), float(cx1), float(cy1))))
    if "".join(c.text for c in out) != "".join(parts) or any(len(c.text) != 1 for c in out):
        return []
    return out


_WORKER_ENGINE: OcrEngine | None = None


def _worker_init(config: OcrConfig, parent_pid: int) -> None:
    global _WORKER_ENGINE
    exit_with_parent(parent_pid)  # first: loading the engine takes seconds the parent may not live
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER_ENGINE = OcrEngine(config)


def _worker_read(image: np.ndarray) -> list[OcrWord]:
    assert _WORKER_ENGINE is not None
    return _WORKER_ENGINE(image)


def _read_or_error(engine: OcrEngine, image: np.ndarray) -> list[OcrWord] | Exception:
    try:
        return engine(image)
    except Exception as e:  # the engine's own failure on this one image (e.g. an extreme aspect ratio)
        return e


class OcrWorkerError(RuntimeError):
    """An OCR worker process died, so its results will never come."""


_DEAD_WORKER = ("an OCR worker process died before returning its results. If the script that started "
                "the run builds a Trainer or a reward at module level, put that code under "
                "`if __name__ == \"__main__\":` (workers are spawned and re-import the main module); "
                "otherwise the worker ran out of memory or crashed: reward.text_ocr.workers=0 reads "
                "in this process and see the engine's own error")


class OcrPool:
    """OCR over a batch of images, in worker processes (workers=0: in this process).

    `submit` returns at once so that scoring can overlap with sampling; `result` waits."""

    def __init__(self, config: OcrConfig | None = None, workers: int = 1):
        self.config = config or OcrConfig()
        self.workers = workers
        self._local: OcrEngine | None = None
        self._pool = None
        if workers > 0:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: forking a process that holds torch threads can deadlock. An executor,
            # not mp.Pool: when a worker dies, mp.Pool starts another and the batch waits forever,
            # while the executor fails its futures (BrokenProcessPool), which `result` turns into
            # a clear error. Workers watch this process and end with it (exit_with_parent).
            self._pool = ProcessPoolExecutor(workers, mp.get_context("spawn"), _worker_init,
                                             (self.config, os.getpid()))

    def submit(self, images: list[np.ndarray], keep_errors: bool = False):
        """Start reading `images`; with keep_errors, an image the engine fails on gets its exception
        in place of its words (see `result_each`) instead of failing the whole batch."""
        if self._pool is None:
            if self._local is None:
                self._local = OcrEngine(self.config)
            if keep_errors:
                return [_read_or_error(self._local, im) for im in images]
            return [self._local(im) for im in images]
        from concurrent.futures.process import BrokenProcessPool

        try:
            return [self._pool.submit(_worker_read, im) for im in images]
        except BrokenProcessPool as err:
            raise OcrWorkerError(_DEAD_WORKER) from err

    @staticmethod
    def result(handle) -> list[list[OcrWord]]:
        from concurrent.futures import Future
        from concurrent.futures.process import BrokenProcessPool

        if not handle or not isinstance(handle[0], Future):
            return handle
        try:
            return [f.result() for f in handle]
        except BrokenProcessPool as err:
            raise OcrWorkerError(_DEAD_WORKER) from err

    @staticmethod
    def result_each(handle) -> list[list[OcrWord] | Exception]:
        """Like `result`, but an image the engine raised on gives its exception, and the others
        their words (a dead worker still fails the batch: that is no image's fault)."""
        from concurrent.futures import Future
        from concurrent.futures.process import BrokenProcessPool

        if not handle or not isinstance(handle[0], Future):
            return handle
        out: list[list[OcrWord] | Exception] = []
        for f in handle:
            err = f.exception()
            if isinstance(err, BrokenProcessPool):
                raise OcrWorkerError(_DEAD_WORKER) from err
            out.append(f.result() if err is None else err)
        return out

    def read(self, images: list[np.ndarray]) -> list[list[OcrWord]]:
        return self.result(self.submit(images))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> OcrPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
