"""Checkpoints: safetensors for weights, JSON for small state, torch files (weights-only) for
optimizer state. A checkpoint is a directory that appears atomically (written under a temporary
name, then renamed), so a run killed at any moment leaves either the old or the new one whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CKPT_RE = re.compile(r"^step_(\d{8})$")


class CheckpointError(ValueError):
    pass


def save_checkpoint(root: str | Path, step: int, tensors: dict[str, dict[str, torch.Tensor]],
                    state: dict[str, Any], objects: dict[str, Any] | None = None, keep: int = 3) -> Path:
    """Write root/step_XXXXXXXX/ atomically: {name}.safetensors per tensor dict, state.json,
    and {name}.pt per object (optimizer state and the like; loaded with weights_only=True)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_ckpt_", dir=root))
    try:
        for name, sd in tensors.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp / f"{name}.safetensors"))
        for name, obj in (objects or {}).items():
            torch.save(obj, tmp / f"{name}.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    prune_checkpoints(root, keep)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(root: str | Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in Path(root).glob(".tmp_ckpt_*"):  # leftovers of a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)


def load_state(ckpt: str | Path) -> dict[str, Any]:
    return json.loads((Path(ckpt) / "state.json").read_text())


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    return load_file(str(path))


def load_object(path: str | Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_into(module: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Load a state dict strictly, naming missing/unexpected keys and the first shape mismatches."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    problems = []
    if bad:
        problems.append("shape mismatch: " + "; ".join(f"{k} is {a} in the file but {b} in the model"
                                                       for k, a, b in bad[:3]))
    if missing:
        problems.append(f"{len(missing)} missing tensors (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (first: {', '.join(unexpected[:3])})")
    if problems:
        raise CheckpointError(f"{what} does not fit the model config: " + " | ".join(problems)
                              + ". Check that the config matches the one the checkpoint was trained with.")
    module.load_state_dict(sd)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
