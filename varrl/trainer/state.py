"""Everything a killed RL run needs to continue bit-identically: weights, optimizer, RNG states of
every process and generator, and the step (which is also the data position)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from varrl.checkpoint import CheckpointError, load_object, load_state, load_tensors, resume_latest, save_checkpoint
from varrl.trainer.fsdp import load_full_state_


@dataclass
class RngState:
    """The RNG states of one process: torch's global generator, numpy, python, and the rollout generator."""

    torch_state: torch.Tensor
    numpy_state: list
    python_state: list
    rollout_state: torch.Tensor

    @staticmethod
    def capture(rollout_gen: torch.Generator) -> RngState:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        return RngState(torch.get_rng_state(), [name, keys.tolist(), pos, has_gauss, gauss],
                        [version, list(internal), gauss_next], rollout_gen.get_state())

    def restore(self, rollout_gen: torch.Generator) -> None:
        torch.set_rng_state(self.torch_state)
        name, keys, pos, has_gauss, gauss = self.numpy_state
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = self.python_state
        random.setstate((version, tuple(internal), gauss_next))
        rollout_gen.set_state(self.rollout_state)


def save_train_checkpoint(root: Path, step: int, model_sd: dict[str, torch.Tensor], optim_sd: dict,
                          rngs: list[RngState], extra: dict, keep: int, adapters=None) -> Path:
    """The model's and the optimizer's full state dicts (varrl.trainer.fsdp.full_state_dicts);
    rngs: one per rank, in rank order. Tensors go to safetensors, the rest to JSON, the optimizer
    to a .pt read back with weights_only=True. With LoRA `adapters`, `model_sd` holds only the
    adapter tensors (varrl.trainer.fsdp.adapter_state_dicts): the frozen base is re-read from
    policy.path on resume."""
    rng_tensors = {}
    for r, s in enumerate(rngs):
        rng_tensors[f"rank{r}.torch"] = s.torch_state
        rng_tensors[f"rank{r}.rollout"] = s.rollout_state
    state = {"step": step, "world": len(rngs), **extra,
             "rng": [{"numpy": s.numpy_state, "python": s.python_state} for s in rngs]}
    if adapters is not None:
        state["lora"] = adapters.describe()
    return save_checkpoint(root, step, {"model": model_sd, "rng": rng_tensors}, state, {"optimizer": optim_sd},
                           keep=keep)


def load_train_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          rank: int, world: int, adapters=None) -> tuple[dict, RngState]:
    """Load weights (with LoRA `adapters`: the adapter tensors) and optimizer in place; return the
    JSON state and this rank's RNG state."""
    state = load_state(ckpt)
    saved_world = state.get("world", 1)
    if saved_world != world:
        raise CheckpointError(f"{ckpt} was written by {saved_world} processes but this run has {world}; resume "
                              f"with the same number of processes (torchrun --nproc-per-node {saved_world})")
    if ("lora" in state) != (adapters is not None):
        saved = f"with LoRA (train.lora.rank={state['lora']['rank']})" if "lora" in state else "without LoRA"
        raise CheckpointError(f"{ckpt} was written {saved}; resume with the train.lora settings of the run")
    weights = load_tensors(ckpt / "model.safetensors")
    if adapters is not None:
        adapters.check_state_dict(weights, f"{ckpt}/model.safetensors")
    load_full_state_(model, optimizer, weights, load_object(ckpt / "optimizer.pt"), str(ckpt),
                     partial=adapters is not None)
    rng = load_tensors(ckpt / "rng.safetensors")
    js = state["rng"][rank]
    return state, RngState(rng[f"rank{rank}.torch"], js["numpy"], js["python"], rng[f"rank{rank}.rollout"])


def resume_train_checkpoint(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int,
                            world: int, warn, adapters=None) -> tuple[Path, dict, RngState] | None:
    """Load the newest intact checkpoint under `root` (weights and optimizer in place): (its path,
    its JSON state, this rank's RNG state), or None when there is none yet. Newer checkpoints that
    are damaged are skipped, each named with its fault through `warn`; a later checkpoint that
    loaded fully overwrites whatever a damaged one loaded before failing."""
    found = resume_latest(root, lambda ckpt: load_train_checkpoint(ckpt, model, optimizer, rank, world, adapters), warn)
    if found is None:
        return None
    ckpt, (state, rng) = found
    return ckpt, state, rng


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (full disk, lost mount, ...): the run stops with one line."""

    def __init__(self, where: Path, step: int, err: Exception, run_dir: Path):
        if isinstance(err, OSError):
            from varrl.errors import os_error_line

            reason = os_error_line(err)
        else:  # torch's writer reports a full disk as "[enforce fail at inline_container.cc] unexpected pos"
            reason = "the write failed (is the disk full?)"
        super().__init__(f"cannot write the step-{step} checkpoint under {where}: {reason}. The run stopped; free "
                         f"space and continue with --resume {run_dir} (it restarts from the last checkpoint)")
