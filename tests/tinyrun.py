"""The tiny `varrl train` runs of the tests: a brightness reward (no OCR model to load), small batches
and few held-out prompts, so that a run takes seconds on a CPU. `run_args` starts from the settings
they share (BASE), so that each test names only what it changes."""

from __future__ import annotations

from pathlib import Path

BASE: dict[str, str] = {
    "reward.weights": "{brightness: 1.0}",
    "train.prompts_per_step": "2",
    "train.group_size": "4",
    "train.eval_prompts": "2",
    "rl.vmr.m": "2",  # the tiny models have 3 grids: VMR splits after the second
}


def run_args(model: str | Path, run_dir: str | Path, name: str | None, *overrides: str) -> list[str]:
    """The `key=value` arguments of a tiny run `run_dir/name` of the model folder `model`: BASE, where
    each override replaces the value of its key (or adds the key). Name None sets no run.name (`varrl
    ablate` names its runs itself)."""
    settings = {"policy.path": str(model), "run.dir": str(run_dir)}
    if name is not None:
        settings["run.name"] = name
    settings.update(BASE)
    for override in overrides:
        key, _, value = override.partition("=")
        settings[key] = value
    return [f"{key}={value}" for key, value in settings.items()]
