"""`varrl pretrain`: train the embedded default from scratch (tokenizer, then transformer) on
synthetic text renderings, resumably, and export the weights that `varrl.load_policy()` ships."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from varrl.config import RunConfig, load_config, save_config
from varrl.config_checks import Range, at_least, check_device_name, check_ranges, positive
from varrl.data.synth import SynthConfig
from varrl.models.nano import NanoConfig
from varrl.models.tokenizer import TokenizerConfig


@dataclass
class TokenizerTrainConfig:
    """Optimisation of the VQ tokenizer."""

    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    l2_weight: float = 1.0
    text_weight: float = 4.0
    """loss weight of pixels inside word boxes relative to the rest"""
    vq_weight: float = 1.0
    restart_every: int = 25
    """move unused codes onto current residuals every n steps (0: never)"""
    dead_code_threshold: float = 0.05
    """a code is dead when its running (EMA) count of uses per step falls below this"""
    log_every: int = 20
    sample_every: int = 250
    save_every: int = 100
    ocr_eval_images: int = 48
    pca_images: int = 256
    """images whose patches initialise the linear encoder/decoder maps by PCA (0: random init)"""
    init_from: str | None = None
    """model directory whose tokenizer weights start this stage (with steps=0: used as they are)"""

    def __post_init__(self) -> None:
        check_ranges(self, {
            "steps": at_least(0), "batch_size": at_least(1), "lr": positive, "warmup": at_least(0),
            "weight_decay": at_least(0), "grad_clip": at_least(0, "(0: no clipping)"), "l2_weight": at_least(0),
            "text_weight": at_least(0), "vq_weight": at_least(0), "restart_every": at_least(0, "(0: never)"),
            "dead_code_threshold": at_least(0), "log_every": at_least(1), "sample_every": at_least(1),
            "save_every": at_least(1), "ocr_eval_images": at_least(0), "pca_images": at_least(0)})


@dataclass
class ModelTrainConfig:
    """Optimisation of the nano transformer (teacher-forced cross-entropy on tokenized images)."""

    steps: int = 8000
    batch_size: int = 16
    lr: float = 6e-4
    warmup: int = 200
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    cond_drop: float = 0.1
    """probability of replacing a prompt by the empty prompt: trains the unconditional branch for CFG"""
    text_weight: float = 1.0
    """loss weight of tokens whose cells overlap a word box (grown by one cell), relative to the
    rest: the words are a tenth of an image's tokens but all of what a text reward asks for"""
    log_every: int = 20
    save_every: int = 100
    eval_every: int = 500
    """sample the held-out prompts, OCR them, log word accuracy and write a sample grid"""
    eval_prompts: int = 64
    """held-out prompts for the OCR word-accuracy check during training"""
    eval_cfg: float = 3.0
    init_from: str | None = None
    """model directory (e.g. varrl/assets/nano) whose transformer weights start this run, with a
    fresh optimizer: continues pretraining when the original run directory is gone"""

    def __post_init__(self) -> None:
        check_ranges(self, {
            "steps": at_least(0), "batch_size": at_least(1), "lr": positive, "warmup": at_least(0),
            "weight_decay": at_least(0), "grad_clip": at_least(0, "(0: no clipping)"),
            "cond_drop": Range(0, 1, hi_open=True), "text_weight": at_least(0), "log_every": at_least(1),
            "save_every": at_least(1), "eval_every": at_least(1), "eval_prompts": at_least(1),
            "eval_cfg": at_least(0)})


@dataclass
class PretrainConfig:
    """Everything `varrl pretrain` needs; the model part is what ships."""

    run: RunConfig = field(default_factory=lambda: RunConfig(name="pretrain"))
    stage: Literal["all", "tokenizer", "model"] = "all"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_data: SynthConfig = field(default_factory=SynthConfig)
    tokenizer_train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)
    model: NanoConfig = field(default_factory=NanoConfig)
    data: SynthConfig = field(default_factory=SynthConfig)
    model_train: ModelTrainConfig = field(default_factory=ModelTrainConfig)
    ocr_workers: int = 1
    device: str = "cpu"
    """torch device for training ('cpu', 'cuda', 'cuda:1', or 'auto' = cuda when available)"""
    export_dtype: Literal["float32", "float16"] = "float16"
    """precision of the exported model directory (training checkpoints stay float32)"""

    def __post_init__(self) -> None:
        check_ranges(self, {"ocr_workers": at_least(0, "(0: OCR in this process)")})
        check_device_name(self, "device")


def export_run(run_dir: str, dest: str, overrides: list[str]) -> Path:
    """Write the model directory of a pretraining run (its latest checkpoints) to `dest`."""
    from varrl.recipes.common import RunDirError
    from varrl.recipes.pretrain_model import export_weights

    saved = Path(run_dir) / "config.yaml"
    if not saved.exists():
        raise RunDirError(f"cannot export {run_dir}: no config.yaml inside (is it a pretrain run dir?)")
    cfg = load_config(PretrainConfig, saved, overrides)
    return export_weights(cfg, Path(run_dir), Path(dest))


def run_pretrain(config_path: str | None, overrides: list[str], resume: str | None) -> Path:
    from varrl.rundir import RunDirError, RunLock
    from varrl.stop import as_stopped

    if resume:
        run_dir = Path(resume)
        saved = run_dir / "config.yaml"
        if not saved.exists():
            raise RunDirError(f"cannot resume {run_dir}: no config.yaml inside (is it a pretrain run dir?)")
        cfg = load_config(PretrainConfig, saved, overrides)
    else:
        cfg = load_config(PretrainConfig, config_path, overrides)
        run_dir = Path(cfg.run.dir) / cfg.run.name
        if (run_dir / "config.yaml").exists():
            raise RunDirError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, "
                              "or choose another run.name")
        run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir, lambda text: print(f"varrl pretrain: warning: {text}", file=sys.stderr)):
        save_config(cfg, run_dir / "config.yaml")
        try:
            _pretrain_stages(cfg, run_dir)
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: say how to go on
            raise as_stopped(e, f"varrl pretrain --resume {run_dir} goes on from its last checkpoint") from None
    return run_dir


def _pretrain_stages(cfg: PretrainConfig, run_dir: Path) -> None:
    from varrl.checkpoint import latest_intact_checkpoint
    from varrl.ocr import OcrPool
    from varrl.recipes.pretrain_tokenizer import train_tokenizer
    from varrl.rundir import RunDirError

    def latest(stage: str) -> Path | None:  # damaged newer checkpoints are skipped, with a warning
        return latest_intact_checkpoint(run_dir / stage / "checkpoints",
                                        lambda text: print(f"varrl pretrain: warning: {text}", file=sys.stderr))

    with OcrPool(workers=cfg.ocr_workers) as ocr:
        if cfg.stage in ("all", "tokenizer"):
            tok_ckpt = latest("tokenizer")
            train_tokenizer(cfg, run_dir, tok_ckpt, ocr)
        if cfg.stage in ("all", "model"):
            from varrl.recipes.pretrain_model import export_weights, train_model

            tok_ckpt = latest("tokenizer")
            if tok_ckpt is None:
                raise RunDirError(f"stage 'model' needs a trained tokenizer in {run_dir}/tokenizer; "
                                  "run stage=tokenizer first")
            train_model(cfg, run_dir, tok_ckpt, latest("model"), ocr)
            export_weights(cfg, run_dir)
