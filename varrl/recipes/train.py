"""`varrl train`: RL-tune a policy; a thin recipe over varrl.trainer (config, run directory, processes)."""

from __future__ import annotations

import sys
from pathlib import Path

from varrl.config import load_config, save_config
from varrl.rundir import RunDirError, RunLock
from varrl.stop import as_stopped
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.dist import barrier, close_distributed, gather_objects, init_distributed


def steps_done(run_dir: Path) -> int:
    """The step of the run's newest checkpoint (0: none yet)."""
    from varrl.checkpoint import CKPT_RE, latest_checkpoint

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    return int(CKPT_RE.match(ckpt.name).group(1)) if ckpt is not None else 0


def run_train(config_path: str | None, overrides: list[str], resume: str | None) -> tuple[Path, dict | None]:
    """Check everything (config, devices, prompt files, model, split), then lock and write the run
    directory, then train. A bad input fails before the folder exists; a run held by another
    process is refused, naming it."""
    from varrl.trainer.checks import check_resume, check_run_dir, check_start
    from varrl.trainer.fsdp import check_fsdp
    from varrl.trainer.loop import Trainer

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
        _refuse_existing(run_dir)
    # Everything that can be checked without the model, before anything is written.
    warnings = check_start(cfg)
    info = init_distributed(cfg.policy.device)
    lock, created = None, False
    try:
        if cfg.train.prompts_per_step % info.world:
            raise RunDirError(f"train.prompts_per_step={cfg.train.prompts_per_step} must be divisible by the "
                              f"number of processes ({info.world}): a prompt's group stays on one process")
        check_fsdp(cfg.train, info.world)
        if resume:  # the folder exists: lock it before the minutes of loading, so a second resume fails at once
            lock = _on_rank0(info, lambda: RunLock(run_dir, _warn).acquire())
        # The model, prompts and split: nothing is written yet.
        trainer = Trainer(cfg, run_dir, info, resume=bool(resume), warnings=warnings, open_run=False)
        if info.main:
            for w in trainer.start_warnings:
                _warn(w)
        if resume:  # overrides given now are recorded, once they have passed the checks
            _on_rank0(info, lambda: save_config(cfg, run_dir / "config.yaml"))
        else:
            if info.main:  # a run.dir that is a file or read-only: one line naming it
                existed = run_dir.exists()
                check_run_dir(run_dir)
                if not existed:
                    run_dir.rmdir()  # _create_run makes it, and so knows to remove it after a failed start
            lock, created = _on_rank0(info, lambda: _create_run(cfg, run_dir)) or (None, False)
        trainer.open()
        report = trainer.run()
        # Rank 0 writes the report after the last collective; the others wait for it before tearing
        # their process group down. A rank that left early and then failed at exit (gloo at interpreter
        # shutdown, seen once in CI) would otherwise have torchrun stop rank 0 mid-report.
        barrier(info)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: say how to go on, once the run is ours to name
        raise as_stopped(e, _resume_hint(run_dir) if lock is not None else "") from None
    except Exception as e:
        if not resume and lock is not None and _is_user_error(e) and not started_training(run_dir):
            lock.release()
            lock = None
            _remove_failed_start(run_dir, created)  # so that the corrected command is not refused
        raise
    finally:
        if lock is not None:
            lock.release()
        close_distributed()
    return run_dir, report


def _resume_hint(run_dir: Path) -> str:
    step = steps_done(run_dir)
    where = f"from its checkpoint at step {step}" if step else "from step 0 (no step was checkpointed yet)"
    return f"varrl train --resume {run_dir} goes on {where}"


def _warn(text: str) -> None:
    print(f"varrl train: warning: {text}", file=sys.stderr)


def _refuse_existing(run_dir: Path) -> None:
    if (run_dir / "config.yaml").exists():
        raise RunDirError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, "
                          "or choose another run.name=...")


def _create_run(cfg: TrainRunConfig, run_dir: Path) -> tuple[RunLock, bool]:
    """Make and lock the run folder, then write its config.yaml (rank 0; the lock first, so two
    new runs of one name cannot both get past the check). Returns the lock and whether the folder
    is new."""
    from varrl.trainer.checks import check_run_dir

    created = not run_dir.exists()
    check_run_dir(run_dir)
    lock = RunLock(run_dir, _warn).acquire()
    try:
        _refuse_existing(run_dir)
        save_config(cfg, run_dir / "config.yaml")
    except BaseException:
        lock.release()
        raise
    return lock, created


def _on_rank0(info, make):
    """make() on rank 0 only; its error reaches every rank (the others would otherwise wait at the
    next collective until it times out). Returns what make() returned (None on the other ranks)."""
    result, error = None, None
    if info.main:
        try:
            result = make()
        except (RunDirError, OSError) as e:
            error = e
    errors = gather_objects(info, None if error is None else str(error))
    if error is not None:
        raise error
    if errors[0] is not None:
        raise RunDirError(errors[0])
    barrier(info)
    return result


def started_training(run_dir: Path) -> bool:
    """Whether the run got as far as a checkpoint (then what it wrote is kept, whatever went wrong)."""
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(ckpts.iterdir())


def _is_user_error(err: BaseException) -> bool:
    from varrl.errors import USER_ERRORS

    return isinstance(err, USER_ERRORS)


def _remove_failed_start(run_dir: Path, created: bool) -> None:
    """Undo what a new run wrote before a bad input stopped it: the whole folder when this start
    made it, else its config.yaml (which would make the corrected command refuse the folder)."""
    import shutil

    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        (run_dir / "config.yaml").unlink(missing_ok=True)
