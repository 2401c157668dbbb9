"""The one place that turns a device name from a config or the command line into a torch device."""

from __future__ import annotations


def resolve_device(name: str, local_rank: int | None = None) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; other names pass through. Under torchrun
    (`local_rank` given) a bare 'cuda' becomes 'cuda:<local_rank>': one GPU per process."""
    if name == "auto":
        import torch

        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    return name
