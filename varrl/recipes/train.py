"""`varrl train`: RL-tune a policy; a thin recipe over varrl.trainer (config, run directory, processes)."""

from __future__ import annotations

import sys
from pathlib import Path

from varrl.config import load_config, save_config
from varrl.rundir import RunDirError
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.dist import barrier, close_distributed, init_distributed


def steps_done(run_dir: Path) -> int:
    """The step of the run's newest checkpoint (0: none yet)."""
    from varrl.checkpoint import CKPT_RE, latest_checkpoint

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    return int(CKPT_RE.match(ckpt.name).group(1)) if ckpt is not None else 0


def run_train(config_path: str | None, overrides: list[str], resume: str | None) -> tuple[Path, dict | None]:
    from varrl.trainer.checks import check_resume, check_run_dir, check_start
    from varrl.trainer.fsdp import check_fsdp
    from varrl.trainer.loop import train

    if resume:
        run_dir = Path(resume)
        # config.yaml alone marks a run: one killed before its first metrics line (during the
        # step-0 evaluation) has no metrics.jsonl yet, and resumes from the start.
        if not (run_dir / "config.yaml").exists():
            raise RunDirError(f"cannot resume {run_dir}: it is not a varrl train run directory "
                              "(expected the config.yaml that varrl train writes first)")
        cfg = load_config(TrainRunConfig, run_dir / "config.yaml", overrides, apply_method_preset)
        saved = load_config(TrainRunConfig, run_dir / "config.yaml", [], apply_method_preset)
        check_resume(cfg, saved, run_dir, steps_done(run_dir))
    else:
        cfg = load_config(TrainRunConfig, config_path, overrides, apply_method_preset)
        run_dir = Path(cfg.run.dir) / cfg.run.name
        if (run_dir / "config.yaml").exists():
            raise RunDirError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, "
                              "or choose another run.name=...")
    # Everything that can be checked without the model, before anything is written.
    warnings = check_start(cfg)
    info = init_distributed(cfg.policy.device)
    try:
        if cfg.train.prompts_per_step % info.world:
            raise RunDirError(f"train.prompts_per_step={cfg.train.prompts_per_step} must be divisible by the "
                              f"number of processes ({info.world}): a prompt's group stays on one process")
        check_fsdp(cfg.train, info.world)
        if info.main:
            for w in warnings:
                print(f"varrl train: warning: {w}", file=sys.stderr)
            check_run_dir(run_dir)
            save_config(cfg, run_dir / "config.yaml")
        barrier(info)
        report = train(cfg, run_dir, info, resume=bool(resume), warnings=warnings)
    finally:
        close_distributed()
    return run_dir, report
