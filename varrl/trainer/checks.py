"""What `varrl train` checks before it writes anything: the devices exist, the prompt files read,
every prompt can earn a reward, the run folder can be made, and a resume continues the same run.
Config ranges are the config dataclasses' own (varrl.config_checks); this is what needs the machine,
the files or several sections at once. Returns warnings (one line each) for what is allowed but
probably not meant."""

from __future__ import annotations

from pathlib import Path

from varrl.config import ConfigError
from varrl.data.prompts import JsonlPrompts, PromptFileError
from varrl.rundir import RunDirError
from varrl.trainer.config import TrainRunConfig

TEXT_ONLY_REWARDS = ("text_ocr",)
"""rewards that score only the words a prompt asks for (NaN for a prompt that asks for none)"""


def check_device(name: str, key: str) -> None:
    """A ConfigError naming `key` when device `name` is not on this machine."""
    if name == "auto":
        return
    import torch

    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={name!r} but this machine has no usable CUDA device; use {key}=cpu "
                              f"(or {key}=auto: CUDA when there is one)", key)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})", key)
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={name!r} but MPS is not available here; use {key}=cpu", key)


def check_prompt_files(cfg: TrainRunConfig) -> list[str]:
    """Read the prompt files as the trainer will (errors name file and line); a training file in
    which no prompt asks for words is an error under a text-only reward (nothing could be learned),
    some such prompts a warning (their groups are skipped)."""
    d, warnings = cfg.data, []
    weighted = [name for name, w in cfg.reward.weights.items() if w != 0]
    text_only = d.classes is None and all(name in TEXT_ONLY_REWARDS for name in weighted)
    for key, path in (("data.prompts_file", d.prompts_file), ("data.eval_prompts_file", d.eval_prompts_file)):
        if path is None or (key == "data.eval_prompts_file" and path == d.prompts_file):
            continue
        source = JsonlPrompts(path)
        warnings += source.warnings
        if not (text_only and source.no_targets):
            continue
        lines = ", ".join(map(str, source.no_targets[:5])) + (", ..." if len(source.no_targets) > 5 else "")
        fix = ('put the text to render in double quotes in the prompt, or give a "words" list; '
               f"or add a reward that scores any image (reward.weights) ({key})")
        if key == "data.prompts_file" and len(source.no_targets) == len(source):
            raise PromptFileError(f"{path}: no prompt asks for any words (lines {lines}), so the "
                                  f"{'/'.join(weighted)} reward cannot score a single image; {fix}")
        warnings.append(f"{path}: {len(source.no_targets)} of {len(source)} prompts ask for no words (lines {lines}); "
                        f"the {'/'.join(weighted)} reward cannot score them, so they earn nothing"
                        + (" and their groups are skipped" if key == "data.prompts_file" else ""))
    return warnings


def check_run_dir(run_dir: Path) -> None:
    """The run folder exists or can be made, and takes files (made here, before the run starts)."""
    parent = run_dir.parent
    if parent.exists() and not parent.is_dir():
        raise RunDirError(f"run.dir {parent} is a file, not a folder; choose a folder for run.dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".varrl_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot create the run folder {run_dir} ({e.strerror or e}); choose a writable "
                          "run.dir") from None


def check_resume(cfg: TrainRunConfig, saved: TrainRunConfig, run_dir: Path, steps_done: int) -> None:
    """A resume continues the run it names: the same run.name and run.dir (the folder is where it
    is, so a new name would be recorded but not used), and no fewer train.steps than are done."""
    for key in ("name", "dir"):
        if getattr(cfg.run, key) != getattr(saved.run, key):
            raise ConfigError(f"run.{key} cannot change on --resume (the run {run_dir} was started with "
                              f"run.{key}={getattr(saved.run, key)!r}); to start a new run from its weights, "
                              f"use policy.path={run_dir} without --resume", f"run.{key}")
    if cfg.train.steps < steps_done:
        raise ConfigError(f"train.steps={cfg.train.steps} is below the {steps_done} steps {run_dir} has already "
                          f"done; give train.steps >= {steps_done} (the run cannot go back)", "train.steps")


def check_start(cfg: TrainRunConfig) -> list[str]:
    """Every check that needs no model: devices and prompt files. Returns the warnings."""
    check_device(cfg.policy.device, "policy.device")
    for name in cfg.reward.weights:
        device = getattr(getattr(cfg.reward, name), "device", None)
        if device is not None:
            check_device(device, f"reward.{name}.device")
    return check_prompt_files(cfg)
