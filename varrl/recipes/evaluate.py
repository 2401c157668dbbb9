"""`varrl eval`: generate a benchmark's images with a policy (or take a folder of images from any
generator) and score them. Benchmarks are entries of BENCHMARKS: name -> runner(EvalConfig)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from varrl.config import to_dict
from varrl.device import resolve_device
from varrl.eval.cvtg import EvalError
from varrl.fileio import atomic_write_text
from varrl.policy.sampler import SamplerConfig


def shipped_cvtg_root() -> Path:
    """The small CVTG-format benchmark built from the synthetic generator's held-out words."""
    return Path(str(resources.files("varrl").joinpath("assets/bench/cvtg_synth")))


@dataclass
class EvalConfig:
    """Settings of one `varrl eval` run."""

    benchmark: str = "cvtg"
    """which benchmark to run (a key of BENCHMARKS)"""
    data: str | None = None
    """benchmark root (default: the shipped synthetic CVTG benchmark)"""
    checkpoint: str | None = None
    """model directory to generate with (default: the shipped nano model)"""
    images: str | None = None
    """score the images in this folder instead of generating ({subset}/{N}/{index}.png)"""
    out: str = "runs/eval_cvtg"
    """output folder: images (when generating), metrics.json, metrics.md, reads.jsonl"""
    limit: int = 0
    """score only this many prompts, taken round-robin over the benchmark's files (0: all)"""
    seed: int = 0
    batch: int = 16
    """prompts per generation batch (and per OCR chunk)"""
    ocr_workers: int = 2
    """OCR worker processes (0: OCR in this process)"""
    clip_model: str | None = None
    """CLIP model directory or hub id for CLIPScore (none: clip_score is null)"""
    device: str = "auto"
    """device for generation and CLIP: auto, cpu, cuda, ..."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    hpsv3_backbone: str | None = None
    """hpsv3 benchmark: local Qwen2-VL-7B-Instruct directory (config, tokenizer, preprocessor files)"""
    hpsv3_checkpoint: str | None = None
    """hpsv3 benchmark: the released HPSv3.safetensors"""
    vae: str | None = None
    """tokenizer file of a VAR checkpoint, or the BSQ tokenizer of an Infinity model"""
    text_encoder: str | None = None
    """Infinity: the Flan-T5-XL folder"""
    schedule: str | None = None
    """Infinity: scale schedule (null: 1M, or an RL run's own)"""
    aspect_ratio: float | None = None
    """Infinity: image height / width (null: 1.0, or an RL run's own)"""
    dtype: str | None = None
    """Infinity: 'float32' or 'bfloat16' (null: float32, or an RL run's own)"""


def _policy(cfg: EvalConfig, device: str):
    from varrl.policy.load import load_policy

    return load_policy(cfg.checkpoint, device=device, vae=cfg.vae, text_encoder=cfg.text_encoder,
                       schedule=cfg.schedule, aspect_ratio=cfg.aspect_ratio, dtype=cfg.dtype)


def run_cvtg(cfg: EvalConfig) -> dict:
    """Generate or load one image per CVTG prompt, score word accuracy, NED and CLIPScore, write
    OUT/metrics.json and OUT/metrics.md, and return the metrics."""
    from varrl.eval.cvtg import aggregate, interleave, markdown_table, read_cvtg
    from varrl.eval.runner import GenerationLog, LoadLog, generate_chunks, load_chunks, load_clip, score_chunks
    from varrl.ocr import OcrPool

    data = Path(cfg.data) if cfg.data else shipped_cvtg_root()
    items = interleave(read_cvtg(data), cfg.limit or None)
    if cfg.images and not Path(cfg.images).is_dir():
        raise EvalError(f"--images folder not found: {cfg.images}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    clip, clip_note = load_clip(cfg.clip_model, device)
    if clip_note:
        print(f"varrl eval: {clip_note}", file=sys.stderr)
    gen_log, load_log = GenerationLog(), LoadLog()
    t0 = time.perf_counter()
    with OcrPool(workers=cfg.ocr_workers) as ocr:
        if cfg.images:
            images_dir = Path(cfg.images)
            if not images_dir.is_dir():
                raise EvalError(f"--images folder not found: {images_dir}")
            chunks = load_chunks(items, images_dir, cfg.batch, load_log)
            desc = "scoring"
        else:
            policy = _policy(cfg, device)
            chunks = generate_chunks(policy, items, out, cfg.sampler, cfg.seed, cfg.batch, gen_log)
            desc = "generating+scoring"
        scores = score_chunks(chunks, len(items), ocr, clip, desc, failed=load_log.unreadable)
    elapsed = time.perf_counter() - t0
    _warn_missing(load_log, len(items), cfg.images)
    if not scores:
        raise EvalError(f"no image could be scored: none of the {len(items)} images was found and readable under "
                        f"{cfg.images} (expected {cfg.images}/{items[0].key}.png, ...)")
    metrics = aggregate(scores, clip is not None)
    metrics.update({
        "benchmark": "cvtg", "data": str(data), "source": cfg.images or (cfg.checkpoint or "shipped nano model"),
        "prompts": len(items), "scored": len(scores), "missing": load_log.missing,
        "unreadable": load_log.unreadable, "prompts_shortened": gen_log.truncated,
        "clip_model": cfg.clip_model if clip is not None else None, "clip_note": clip_note,
        "seed": cfg.seed, "sampler": None if cfg.images else to_dict(cfg.sampler), "seconds": round(elapsed, 1),
    })
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    atomic_write_text(out / "metrics.md", f"# CVTG evaluation of {metrics['source']}\n\nbenchmark: `{data}`, "
                                          f"{len(scores)} of {len(items)} images scored\n\n{markdown_table(metrics)}")
    atomic_write_text(out / "reads.jsonl", "".join(
        json.dumps({"key": s.item.key, "prompt": s.item.prompt, "words": s.item.words, "reads": s.reads,
                    "hits": s.words.hits, "ned": s.words.ned, "clip_score": s.clip}) + "\n" for s in scores))
    if gen_log.truncated:
        print(f"varrl eval: note: {len(gen_log.truncated)} prompts were longer than the model reads and were "
              "shortened for generation (listed in metrics.json, prompts_shortened); scoring uses the full prompts",
              file=sys.stderr)
    return metrics


def _warn_missing(log, total: int, images_dir: str | None) -> None:
    for name, keys in (("missing", log.missing), ("unreadable", log.unreadable)):
        if keys:
            shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
            where = f" under {images_dir}" if images_dir else ""
            why = " (not an image file, or one the OCR engine fails on)" if name == "unreadable" else ""
            print(f"varrl eval: warning: {len(keys)} of {total} images {name}{where}{why} ({shown}); "
                  "they are left out of the scores and listed in metrics.json", file=sys.stderr)


def run_hpsv3(cfg: EvalConfig) -> dict:
    """Generate (or load) one image per HPSv3-benchmark prompt (cfg.limit: per category) and score it
    with HPSv3; writes OUT/metrics.json, OUT/metrics.md, OUT/scores.jsonl (varrl.eval.hpsv3_bench)."""
    from varrl.eval.hpsv3_bench import policy_generator, run_hpsv3_benchmark
    from varrl.rewards.hpsv3 import HpsV3Scorer

    if not cfg.data:
        raise EvalError("--benchmark hpsv3 needs --data: a folder with one sub-folder of prompts per category")
    if not cfg.hpsv3_backbone or not cfg.hpsv3_checkpoint:
        raise EvalError("--benchmark hpsv3 needs --hpsv3-backbone (a Qwen2-VL-7B-Instruct directory) and "
                        "--hpsv3-checkpoint (HPSv3.safetensors)")
    device = resolve_device(cfg.device)
    scorer = HpsV3Scorer.load(cfg.hpsv3_backbone, cfg.hpsv3_checkpoint, device=device, batch_size=cfg.batch)
    if cfg.images:
        source, name = cfg.images, cfg.images
    else:
        source = policy_generator(_policy(cfg, device), cfg.sampler, cfg.seed)
        name = cfg.checkpoint or "shipped nano model"
    return run_hpsv3_benchmark(source, cfg.data, cfg.out, scorer, limit=cfg.limit, batch=cfg.batch, name=name)


BENCHMARKS: dict[str, Callable[[EvalConfig], dict]] = {
    "cvtg": run_cvtg,
    "hpsv3": run_hpsv3,
}
"""benchmark name -> runner; each writes its results under cfg.out and returns its metrics"""


def run_eval(cfg: EvalConfig) -> dict:
    if cfg.benchmark not in BENCHMARKS:
        raise EvalError(f"unknown benchmark {cfg.benchmark!r}; choose among {', '.join(sorted(BENCHMARKS))}")
    if cfg.images and cfg.checkpoint:
        raise EvalError("give --checkpoint (generate images) or --images (score existing images), not both")
    if cfg.limit < 0 or cfg.batch < 1 or cfg.ocr_workers < 0:
        raise EvalError("--limit must be >= 0, --batch >= 1 and --ocr-workers >= 0")
    from varrl.trainer.checks import check_device

    check_device(cfg.device, "--device")
    return BENCHMARKS[cfg.benchmark](cfg)
