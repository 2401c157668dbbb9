"""What the update trains and what it is held to: the trainable parameters (train.trainable) and the
frozen starting policy of the KL term."""

from __future__ import annotations

import copy
import re

import torch

from varrl.config import ConfigError


def frozen_reference(policy):
    """The frozen starting policy of the KL term: the policy's own `frozen_reference()` where it has
    one (Infinity: bf16 matmul weights under bf16 autocast), else a copy."""
    if hasattr(policy, "frozen_reference"):
        return policy.frozen_reference()
    ref = copy.deepcopy(policy)
    ref.model.requires_grad_(False)
    return ref


def select_trainable(model: torch.nn.Module, pattern: str | None) -> list[torch.nn.Parameter]:
    """The parameters to train: those whose names match `pattern` (all when None); the others are
    frozen (requires_grad False), so the update neither computes nor applies their gradients."""
    named = list(model.named_parameters())
    if pattern is None:
        return [p for _, p in named]
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"train.trainable={pattern!r} is not a regular expression: {e}", "train.trainable") from e
    chosen = []
    for name, p in named:
        p.requires_grad_(bool(rx.search(name)))
        if p.requires_grad:
            chosen.append(p)
    if not chosen:
        some = ", ".join(n for n, _ in named[:6])
        raise ConfigError(f"train.trainable={pattern!r} matches no parameter of the policy; names look like: "
                          f"{some}, ...", "train.trainable")
    return chosen
