"""torch.distributed in one place: one process (no torchrun) is world size 1 and every helper is
then a no-op, so the trainer has a single code path from a laptop to many GPUs."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's contiguous share of n items (n must divide evenly, checked at start-up)."""
        per = n // self.world
        return range(self.rank * per, (self.rank + 1) * per)


def init_distributed(device: str, timeout_s: float = 600.0) -> DistInfo:
    """Join the process group that torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"
        # A finite timeout: a collective that waits on a dead rank fails instead of hanging forever.
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(info: DistInfo, obj) -> list:
    """Every rank's obj, in rank order, on every rank."""
    if info.world == 1:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def average_gradients_(info: DistInfo, params: list[torch.nn.Parameter]) -> None:
    """Average the gradients over ranks with one all-reduce of a flat buffer (what DDP's buckets
    do; the policy API runs its own forward passes, which DDP's wrapper cannot hook). Gradients
    of FSDP-sharded parameters (DTensors) are left alone: FSDP has reduce-scattered them already."""
    if info.world == 1:
        return
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world
    i = 0
    for g in grads:
        g.copy_(flat[i: i + g.numel()].view_as(g))
        i += g.numel()


def broadcast_flag(info: DistInfo, flag: bool) -> bool:
    """True on every rank when any rank says True (e.g. a NaN loss seen on one rank)."""
    if info.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()
