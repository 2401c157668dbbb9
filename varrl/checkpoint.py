"""Checkpoints: safetensors for weights, JSON for small state, torch files (weights-only) for
optimizer state. A checkpoint is a directory that appears atomically (written under a temporary
name, then renamed), so a run killed at any moment leaves either the old or the new one whole.

Disks fail, copies stop half-way and people edit files, so every checkpoint (and every model
directory varrl writes) also carries manifest.json, written last: the size and sha256 of each of
its files. `check_intact` compares against it; folders written before manifests existed have none
and are taken as they are (their files still fail to load with one line naming the file).
"""

from __future__ import annotations

import hashlib
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


MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    pass


class DamagedCheckpointError(CheckpointError):
    """A checkpoint or model file that exists but cannot be read: cut short, overwritten, or corrupt."""


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
        write_manifest(tmp)
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


def latest_intact_checkpoint(root: str | Path, warn=None, hashes: bool = True) -> Path | None:
    """The newest checkpoint under `root` that `check_intact` passes (see `resume_latest`)."""
    found = resume_latest(root, lambda ckpt: None, warn, hashes)
    return None if found is None else found[0]


def resume_latest(root: str | Path, load, warn=None, hashes: bool = True) -> tuple[Path, Any] | None:
    """(checkpoint, load(checkpoint)) for the newest checkpoint under `root` that `check_intact`
    passes and `load` reads without a DamagedCheckpointError; `warn(message)` hears of each newer
    one skipped and why. None when there is no checkpoint; an error naming every checkpoint and its
    fault when there are some and none is intact."""
    skipped: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(root)):
        why = check_intact(ckpt, hashes)
        if why is None:
            try:
                found = ckpt, load(ckpt)
            except DamagedCheckpointError as e:  # a folder without a manifest, written before they existed
                why = str(e)
            else:
                for bad, bad_why in skipped if warn is not None else ():
                    warn(f"skipping checkpoint {bad}: {bad_why}")
                return found
        skipped.append((ckpt, why))
    if skipped:
        raise DamagedCheckpointError(f"no intact checkpoint in {root}: "
                                     + "; ".join(f"{c.name} ({why})" for c, why in skipped)
                                     + ". Copy the checkpoints back from a backup, or start a new run")
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """folder/manifest.json: the size and sha256 of every other file below `folder`. Write it last,
    once every file is complete, so that it vouches for the finished folder."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
               for p in files}
    path = folder / MANIFEST
    path.write_text(json.dumps({"format": "varrl-manifest/1", "files": entries}, indent=1))
    return path


def check_intact(folder: str | Path, hashes: bool = True) -> str | None:
    """None when every file that folder/manifest.json lists is there, of its size and (with
    `hashes`) its sha256; else what is wrong, naming the file. A folder without a manifest
    (written before manifests existed) passes."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        entries = json.loads(path.read_text())["files"]
        items = [(name, int(e["bytes"]), str(e["sha256"])) for name, e in entries.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"its {MANIFEST} is damaged ({type(e).__name__})"
    for name, size, _ in items:  # sizes first: cheap, and what a cut-short copy gets wrong
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {MANIFEST} says {size} (cut short or overwritten)"
    if hashes:
        for name, _, digest in items:
            if file_sha256(folder / name) != digest:
                return f"{name} does not match its sha256 in {MANIFEST} (changed or corrupted after it was written)"
    return None


def load_state(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / "state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedCheckpointError(f"{path} is damaged: not valid JSON ({e})") from None
    if not isinstance(state, dict):
        raise DamagedCheckpointError(f"{path} is damaged: expected a JSON object, got {type(state).__name__}")
    return state


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError on odd files)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DamagedCheckpointError(f"{path} is damaged or not a safetensors file ({reason}); copy it again "
                                     "from its source or re-export the model") from None


def load_object(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a cut-short zip, random bytes: RuntimeError, UnpicklingError, EOFError, ...
        raise DamagedCheckpointError(f"{path} is damaged: torch cannot read it ({type(e).__name__})") from None


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
