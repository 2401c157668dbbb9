"""Held-out readings of a model at given noise seeds, kept on disk so that a second comparison that
reads the same model again (the reference cell of an ablation, the untrained start) costs nothing.

A reading is stored per noise seed under a key that holds everything it depends on: the content of
every file the config names (the model folder, its tokenizer, the prompts file) rather than their
paths, the config sections that shape the evaluation (policy, sampler, reward, data, the held-out
prompts' seed and count, the micro-batch and thread count: both change the floating point sums), the
noise seed, the versions of the packages that compute it (torch, the OCR engine) and the content
of varrl's own source and assets. Any change to one of them is a
new key, so a stale reading is never returned; a run resumed and trained on rewrites last/, and with
it the key. Entries are written atomically (a killed evaluation leaves no half entry)."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from varrl.checkpoint import file_sha256
from varrl.config_types import to_dict
from varrl.fileio import atomic_write, read_npz
from varrl.policy.load import shipped_model_dir
from varrl.trainer.config import TrainRunConfig
from varrl.trainer.loop import eval_seed
from varrl.trainer.reeval import evaluate_at_seeds

TRAIN_KEYS = ("eval_prompts", "micro_batch", "threads", "lora")
"""the train settings an evaluation depends on (the rest shape training only)"""


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "varrl" / "paired_eval"


def _content(path: Path) -> str:
    """A file's or a folder's (every file under it, by relative name) content digest."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{f.relative_to(path)}\0{file_sha256(f)}\0".encode())
    return h.hexdigest()


def _by_content(value):
    """value with every string that names an existing file or folder replaced by its content digest."""
    if isinstance(value, dict):
        return {k: _by_content(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_content(v) for v in value]
    if isinstance(value, str) and value and Path(value).exists():
        return "content:" + _content(Path(value))
    return value


PACKAGES = ("torch", "numpy", "rapidocr", "onnxruntime", "pillow", "safetensors")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


@lru_cache(maxsize=1)
def _source_digest() -> str:
    import varrl

    return _content(Path(varrl.__file__).resolve().parent)


def cache_key(cfg: TrainRunConfig, noise_seed: int) -> str:
    policy = to_dict(cfg.policy)
    policy["path"] = policy.get("path") or str(shipped_model_dir())
    train = to_dict(cfg.train)
    what = {"policy": policy, "sampler": to_dict(cfg.sampler), "reward": to_dict(cfg.reward),
            "data": to_dict(cfg.data), "train": {k: train[k] for k in TRAIN_KEYS}, "eval_seed": eval_seed(cfg),
            "noise_seed": noise_seed, "packages": _versions(), "varrl": _source_digest()}
    text = json.dumps(_by_content(what), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def readings(cfg: TrainRunConfig, seeds: list[int], cache: Path | None
             ) -> tuple[list[dict[str, np.ndarray]], int]:
    """Per noise seed: scores_P, words_right_P (NaN where no reading), n_words_P and word_acc, from
    the cache where there, else evaluated (the model loaded once for all missing seeds) and stored.
    Returns the readings and how many came from the cache."""
    keys = {s: cache_key(cfg, s) for s in seeds} if cache is not None else {}
    found = {s: read_npz(cache / f"{keys[s]}.npz") for s in keys}
    missing = [s for s in seeds if found.get(s) is None]
    if missing:
        res, records = evaluate_at_seeds(cfg, missing)
        if res[0].words_right_P is None:
            raise SystemExit("paired_eval.py needs a reward that reads text (text_ocr) for its word accuracy")
        n_words = np.array([len(r.words) for r in records], dtype=np.float64)
        for s, r in zip(missing, res):
            found[s] = {"scores_P": r.scores_P, "words_right_P": r.words_right_P, "n_words_P": n_words,
                        "word_acc": np.array(float(r.metrics["word_acc"]))}
            if cache is not None:
                atomic_write(cache / f"{keys[s]}.npz", lambda f, a=found[s]: np.savez(f, **a))
    return [found[s] for s in seeds], len(seeds) - len(missing)
