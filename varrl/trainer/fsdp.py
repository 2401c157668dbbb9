"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for models that do not fit one GPU.

`train.fsdp: true` shards every transformer block, then the root (embeddings, text path, head),
over all ranks: each rank keeps 1/world of the weights, gradients and AdamW state and gathers a
block's weights only while the block runs. FSDP reduce-scatters (averages) the gradients itself,
so the trainer's all-reduce skips them (their gradients are DTensors: `is_sharded`). The frozen
KL reference is sharded the same way (it would otherwise need a full copy per rank).

The policy drives its model through methods other than `forward` (`encode_texts`, `embed`,
`logits`, ...); those that read the root's own weights are registered as forward methods so that
FSDP gathers the weights around them. Checkpoints stay full, unsharded state dicts (the released
key layout; the optimizer keyed by parameter name), gathered on rank 0 and read back by every
rank, so a run's `last/` loads anywhere and a sharded run resumes bit-identically.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor

from varrl.config import ConfigError


def shard_model_(model: nn.Module, device: torch.device) -> None:
    """fully_shard each block of `model`, then `model` itself, over every rank (in place)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    units = getattr(model, "fsdp_units", None)
    if units is None:
        raise ConfigError("train.fsdp is implemented for Infinity models only; set it to false", "train.fsdp")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # FSDP allocates on the current device
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in units():
        fully_shard(block, mesh=mesh)
    # The root reshards after each call too (FSDP's default keeps a root gathered until the end of
    # the backward, which a no-grad rollout never reaches): outside a call, `parameters()` are
    # always the shards the optimizer steps, never stale gathered copies.
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    for name in model.fsdp_forward_methods:
        register_fsdp_forward_method(model, name)


def is_sharded(t: torch.Tensor | None) -> bool:
    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded tensor; a plain tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def full_value(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered from every rank when sharded or replicated over the mesh)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state dicts for a checkpoint. Sharded: gathered to rank 0's CPU (a
    collective: every rank calls it; the other ranks get empty dicts) with the optimizer keyed by
    parameter name; unsharded: the modules' own state dicts."""
    if not is_sharded(next(model.parameters())):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    opts = _options(cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def adapter_state_dicts(adapters, optimizer: torch.optim.Optimizer, with_base: bool) -> tuple[dict, dict | None, dict]:
    """A LoRA run's checkpoint: (the adapter tensors, the frozen base in the model's own layout or
    None without `with_base`, the optimizer state dict). Sharded: a collective (every rank calls
    it); the adapters are gathered on every rank (they are small), the base and the optimizer (keyed
    by parameter name) on rank 0's CPU only, and the base only when asked for: it never changes."""
    model = adapters.model
    if not is_sharded(next(model.parameters())):
        return adapters.state_dict(), adapters.base_state_dict() if with_base else None, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    opts = _options(cpu_offload=True)
    tensors = {n: full_value(t) for n, t in adapters.state_dict().items()}
    base = adapters.base_state_dict(get_model_state_dict(model, options=opts)) if with_base else None
    return tensors, base, get_optimizer_state_dict(model, optimizer, options=opts)


def load_full_state_(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict,
                     where: str, partial: bool = False) -> None:
    """Load full state dicts (every rank passes the whole of them) into a sharded or plain model.
    `partial`: `model_sd` holds only some of the model's tensors (a LoRA run's adapters, whose
    names the caller has checked); the others keep their values."""
    from varrl.checkpoint import CheckpointError

    by_name = any(isinstance(k, str) for k in optim_sd.get("state", {})) or any(
        isinstance(i, str) for g in optim_sd.get("param_groups", []) for i in g.get("params", []))
    sharded = is_sharded(next(model.parameters()))
    if not sharded and not by_name:
        model.load_state_dict(model_sd, strict=not partial)
        optimizer.load_state_dict(optim_sd)
        return
    if sharded and not by_name:
        raise CheckpointError(f"{where} was written without train.fsdp; resume it with train.fsdp=false")
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, model_sd, options=_options(strict=not partial))
    # Not strict: a parameter that never had a gradient (cfg_uncond when no update used the
    # unconditional branch) has no AdamW state, as in the unsharded optimizer's own state dict.
    set_optimizer_state_dict(model, optimizer, optim_sd, options=_options(strict=False))


def check_fsdp(train, world: int) -> None:
    """What train.fsdp needs of the run (before any model loads): several processes, and the same
    number of evaluation prompts on each (every call of a sharded model is a collective)."""
    if not train.fsdp:
        return
    if world < 2:
        raise ConfigError("train.fsdp shards over the processes of torchrun, but this run has one process; start "
                          "it with torchrun --nproc-per-node N (N >= 2), or set train.fsdp=false", "train.fsdp")
    if train.eval_prompts % world:
        raise ConfigError(f"with train.fsdp, train.eval_prompts={train.eval_prompts} must be divisible by the number "
                          f"of processes ({world}): every process samples as many", "train.eval_prompts")


def shard_policies_(*policies) -> None:
    """Shard the model of each policy given (None: skipped) over every rank."""
    for policy in policies:
        if policy is not None:
            shard_model_(policy.model, policy.device)
