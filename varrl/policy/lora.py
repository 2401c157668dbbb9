"""LoRA adapters (through peft) on a policy's transformer: fewer directions for the weights to walk in.

`attach_lora` wraps chosen nn.Linear layers of `policy.model` in place with peft's LoRA layers and
freezes every base weight. B starts at zero, so the adapted policy starts exactly at its base
model. The returned `LoraAdapters` owns what training needs: the adapter parameters, their
tensors for checkpoints, and the base model with the adapters switched off (peft's
`disable_adapter`), which is the frozen KL reference: one set of weights in memory, not two.

Sampling and re-scoring still run the one `policy.model`, so the ratio stays exactly 1 on-policy.
Any model works whose layers are ordinary nn.Linear modules that its forward pass calls; a model
class may name its default targets in a `lora_targets` attribute (a regular expression).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from varrl.checkpoint import CheckpointError
from varrl.config_checks import Range, at_least, check_ranges, positive
from varrl.config_types import ConfigError, FieldError, to_dict

BLOCK_LINEARS = r"(.*\.)?blocks\.\d+\..*"
"""default targets of a model without `lora_targets`: every nn.Linear inside its `blocks.<i>`"""


@dataclass
class LoraConfig:
    """LoRA adapters instead of full fine-tuning: only the adapters train (train.lora)."""

    rank: int | None = None
    """adapter rank r (null or 0: off, the policy's own weights train)"""
    alpha: float | None = None
    """the adapter adds (alpha / rank) * B A x (null: alpha = rank, a scale of 1)"""
    targets: list[str] | str | None = None
    """the nn.Linear layers that get adapters: a list of module names or dotted name endings
    (['qkv', 'mlp.0']: peft's rule), or one regular expression that must match a whole module name
    (it then picks the Linear layers among its matches); null: the model's attention and MLP
    layers (its `lora_targets`; otherwise every Linear inside blocks.<i>)"""
    dropout: float = 0.0
    """dropout on the adapters' input, only in the update's passes (rollouts never see it; above 0
    the update's log-probs no longer equal the sampled ones)"""

    @property
    def enabled(self) -> bool:
        return bool(self.rank)

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def __post_init__(self) -> None:
        check_ranges(self, {"rank": at_least(0, "(null or 0: LoRA off)"), "alpha": positive,
                            "dropout": Range(0, 1, hi_open=True)})
        t = self.targets
        if isinstance(t, str):
            try:
                re.compile(t)
            except re.error as e:
                raise FieldError("targets", f"is not a regular expression ({e}): {t!r}") from None
        elif t is not None and (not t or not all(t)):
            raise FieldError("targets", f"must name at least one layer and no empty names (null: the model's "
                             f"attention and MLP layers), got {t!r}")


def select_modules(names: list[str], targets: list[str] | str) -> list[str]:
    """The module names that `targets` picks, by peft's rules: a string is a regular expression that
    must match the whole name; a list holds names or dotted endings ('attn.qkv' picks
    'blocks.0.attn.qkv', not 'blocks.0.xattn.qkv')."""
    if isinstance(targets, str):
        rx = re.compile(targets)
        return [n for n in names if rx.fullmatch(n)]
    return [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]


def resolve_targets(model: nn.Module, targets: list[str] | str | None, key: str = "train.lora.targets") -> list[str]:
    """The full names of the Linear layers of `model` that get adapters; an entry that picks no
    Linear layer, or a named layer that is not a Linear, is a ConfigError naming `key`."""
    modules = {n: m for n, m in model.named_modules() if n}
    linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    default = getattr(model, "lora_targets", BLOCK_LINEARS)
    examples = select_modules(linear, default) or linear  # the layers users most likely mean
    some = ", ".join(examples[:8]) + (", ..." if len(examples) > 8 else "")
    if targets is None or isinstance(targets, str):
        spec = default if targets is None else targets
        chosen = [n for n in select_modules(list(modules), spec) if n in linear]
        if not chosen:
            hint = "" if targets is None else f" (one string is a regular expression over whole names; for name " \
                f"endings give a list: [{targets}])"
            raise ConfigError(f"{key}={spec!r} matches no Linear layer of the policy{hint}; its Linear layers are "
                              f"named like: {some}", key)
        return chosen
    for t in targets:
        hit = select_modules(list(modules), [t])
        wrong = [n for n in hit if n not in linear]
        if wrong:
            raise ConfigError(f"{key}: {t!r} picks {wrong[0]}, a {type(modules[wrong[0]]).__name__}, not a Linear "
                              f"layer; LoRA adapts Linear layers only, e.g.: {some}", key)
        if not hit:
            raise ConfigError(f"{key}: {t!r} names no layer of the policy; its Linear layers are named like: {some}",
                              key)
    return select_modules(linear, targets)


def attach_lora(policy, cfg: LoraConfig, key: str = "train.lora") -> LoraAdapters:
    """Put adapters on `policy.model` in place (B = 0: the policy is unchanged), freeze its base
    weights, and set and return `policy.lora`. The model keeps its train/eval mode."""
    peft = import_peft(key)
    if getattr(policy, "lora", None) is not None:
        raise ValueError("this policy already has adapters: merge_adapters(policy) first")
    names = resolve_targets(policy.model, cfg.targets, f"{key}.targets")
    mode = policy.model.training
    # One regex of the exact names: peft matches a list by name endings, which could pick more.
    pcfg = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.rank if cfg.alpha is None else cfg.alpha,
                           target_modules="|".join(re.escape(n) for n in names), lora_dropout=cfg.dropout,
                           bias="none")
    wrapped = peft.get_peft_model(policy.model, pcfg)
    policy.model.train(mode)  # peft's new dropout layers start in train mode; sampling must not drop
    policy.lora = LoraAdapters(wrapped, replace(cfg, targets=names))
    return policy.lora


def merge_adapters(policy) -> None:
    """Fold `policy.lora` into the weights (W + scale * B A) and remove it: a plain policy again,
    every weight trainable, as load_policy returns a model without adapters. Merged weights round
    differently from base + adapter, so log-probs move in the last bits."""
    if getattr(policy, "lora", None) is None:
        return
    mode = policy.model.training
    policy.model = policy.lora.peft_model.merge_and_unload()
    policy.model.requires_grad_(True)
    policy.model.train(mode)
    policy.lora = None


def import_peft(key: str = "train.lora"):
    try:
        import peft
    except ImportError as e:
        raise ConfigError(f"{key}: LoRA needs the peft package; install it with pip install 'varrl[lora]' "
                          "(or pip install peft)", key) from e
    return peft


class LoraAdapters:
    """The adapters of one policy: their parameters and tensors (named as in the model's state dict),
    the base model's own tensors, and the base model with the adapters off."""

    def __init__(self, peft_model, cfg: LoraConfig):
        self.peft_model, self.cfg = peft_model, cfg  # cfg.targets: the resolved full layer names
        self.model: nn.Module = peft_model.base_model.model

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        prefixes = tuple(f"{t}.lora_" for t in self.cfg.targets)
        return [(n, p) for n, p in self.model.named_parameters() if n.startswith(prefixes)]

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters()}

    def check_state_dict(self, sd: dict[str, torch.Tensor], what: str) -> None:
        """Saved adapter tensors fit these adapters (the same names and full shapes), or a clear error."""
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        # (Under FSDP a parameter is this rank's shard; its DTensor still reports the full shape.)
        bad = [n for n in own if n in sd and sd[n].shape != own[n].shape]
        if missing or unexpected or bad:
            raise CheckpointError(
                f"{what} does not fit the adapters (train.lora: rank {self.cfg.rank}, {len(self.cfg.targets)} "
                f"layers): missing {missing[:2]}, unexpected {unexpected[:2]}, other shape {bad[:2]}. Use the "
                "train.lora settings the adapters were trained with.")

    def load_state_dict(self, sd: dict[str, torch.Tensor], what: str) -> None:
        """Copy saved adapter tensors into unsharded adapters, strictly (check_state_dict)."""
        self.check_state_dict(sd, what)
        with torch.no_grad():
            for n, p in self.named_parameters():
                p.copy_(sd[n])

    def base_state_dict(self, full: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The base weights under the names the model has without adapters (a model directory's
        layout), taken from `full`, a state dict of the adapted model (default: its own)."""
        out = {}
        for k, v in (self.model.state_dict() if full is None else full).items():
            layer = next((t for t in self.cfg.targets if k.startswith(t + ".")), None)
            if layer is None:
                out[k] = v
            elif k.startswith(layer + ".base_layer."):
                out[layer + k[len(layer) + len(".base_layer"):]] = v
        return out

    def describe(self) -> dict:
        """The settings that rebuild these adapters (a model directory's "lora" entry)."""
        return to_dict(self.cfg)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model: every adapter off (peft's disable_adapter)."""
        with self.peft_model.disable_adapter():
            yield

    @contextmanager
    def dropout_active(self) -> Iterator[None]:
        """Switch the adapters' dropout on for the update's passes, whatever the model's mode."""
        drops = [m for n, m in self.model.named_modules() if n.endswith(".lora_dropout")]
        modes = [m.training for m in drops]
        try:
            for m in drops:
                m.train(True)
            yield
        finally:
            for m, mode in zip(drops, modes):
                m.train(mode)

    def check_reached(self, key: str = "train.lora.targets") -> None:
        """After a backward pass: every adapter got a gradient. An adapted layer whose forward pass is
        never called (the model reads its weight, e.g. F.linear(x, layer.weight)) would never act."""
        dead = sorted({n.split(".lora_")[0] for n, p in self.named_parameters() if p.grad is None})
        if dead:
            raise ConfigError(f"{key}: the adapters of {', '.join(dead[:4])} got no gradient: the model does not call "
                              "these layers (it reads their weights directly), so an adapter there never acts; "
                              "leave them out of the targets", key)


class BaseModelView:
    """The policy with its adapters switched off: the frozen start of a LoRA run, used as the KL
    reference, without a second copy of any weight."""

    def __init__(self, policy):
        self.policy = policy
        self.schedule = policy.schedule

    def logprobs(self, traj, steps: list[int] | None = None) -> list[torch.Tensor]:
        with self.policy.lora.disabled():
            return self.policy.logprobs(traj, steps)
