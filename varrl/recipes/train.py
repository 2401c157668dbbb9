"""`varrl train`: RL-tune a policy; a thin recipe over varrl.trainer (config, run directory, processes)."""

from __future__ import annotations

from pathlib import Path

from varrl.config import load_config, save_config
from varrl.rundir import RunDirError
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.dist import barrier, close_distributed, init_distributed


def run_train(config_path: str | None, overrides: list[str], resume: str | None) -> tuple[Path, dict | None]:
    from varrl.trainer.loop import train

    if resume:
        run_dir = Path(resume)
        # config.yaml alone marks a run: one killed before its first metrics line (during the
        # step-0 evaluation) has no metrics.jsonl yet, and resumes from the start.
        if not (run_dir / "config.yaml").exists():
            raise RunDirError(f"cannot resume {run_dir}: it is not a varrl train run directory "
                              "(expected the config.yaml that varrl train writes first)")
        cfg = load_config(TrainRunConfig, run_dir / "config.yaml", overrides, apply_method_preset)
    else:
        cfg = load_config(TrainRunConfig, config_path, overrides, apply_method_preset)
        run_dir = Path(cfg.run.dir) / cfg.run.name
        if (run_dir / "config.yaml").exists():
            raise RunDirError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, "
                              "or choose another run.name=...")
    info = init_distributed(cfg.policy.device)
    try:
        if cfg.train.prompts_per_step % info.world:
            raise RunDirError(f"train.prompts_per_step={cfg.train.prompts_per_step} must be divisible by the "
                              f"number of processes ({info.world}): a prompt's group stays on one process")
        if info.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        barrier(info)
        report = train(cfg, run_dir, info, resume=bool(resume))
    finally:
        close_distributed()
    return run_dir, report
