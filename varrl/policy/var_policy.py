"""The next-scale policy over a published class-conditional VAR checkpoint.

Conditions are ImageNet class labels, given as ints or digit strings ("207") and stored in
trajectories as digit strings; label `num_classes` (1000) is the unconditional class, which CFG
uses for its second branch. Sampling, prefix continuation, re-scoring and decoding are the nano
policy's code (one path samples and re-scores, through varrl.policy.sampler): only the condition
differs, so the importance ratio is exactly 1 on-policy here too."""

from __future__ import annotations

import torch

from varrl.models.var.transformer import VAR, fork_label_context
from varrl.models.var.vqvae import VQVAE
from varrl.policy.nano_policy import NanoPolicy
from varrl.policy.sampler import SamplerConfig
from varrl.policy.trajectory import Trajectory


class ClassLabelError(ValueError):
    pass


def parse_label(cond: int | str, num_classes: int) -> int:
    """A condition as a class label 0..num_classes (num_classes = unconditional)."""
    text = str(cond).strip()
    if isinstance(cond, bool) or not text.lstrip("-").isdigit():
        raise ClassLabelError(f"condition {cond!r} is not a class label: this VAR model is class-conditional and "
                              f"takes labels 0..{num_classes - 1} ({num_classes} = unconditional)")
    label = int(text)
    if not 0 <= label <= num_classes:
        raise ClassLabelError(f"class label {label} is outside 0..{num_classes} "
                              f"(0..{num_classes - 1}: classes, {num_classes}: unconditional)")
    return label


class VarPolicy(NanoPolicy):
    """Implements the `NextScalePolicy` protocol (varrl.policy.base) for `VAR` + `VQVAE`."""

    def __init__(self, model: VAR, tokenizer: VQVAE):
        super().__init__(model, tokenizer)

    @property
    def num_classes(self) -> int:
        return self.model.cfg.num_classes

    def labels(self, prompts: list[int | str]) -> torch.Tensor:
        return torch.tensor([parse_label(p, self.num_classes) for p in prompts], dtype=torch.long)

    def check_prompts(self, prompts: list[int | str]) -> None:
        self.labels(list(prompts))

    def prompt_text(self, text: str) -> str:
        return str(text)  # class labels: nothing to map

    def rollout(self, prompts: list[int | str] | None, n: int, sampler: SamplerConfig,
                generator: torch.Generator | None = None, start: Trajectory | None = None,
                steps: int | None = None) -> Trajectory:
        if prompts is not None:
            prompts = [str(int(x)) for x in self.labels(list(prompts)).tolist()]
        return super().rollout(prompts, n, sampler, generator, start, steps)

    def _context(self, prompts: list[int | str], uncond: bool) -> dict:
        """Class context of the rows, or with `uncond` the unconditional class (1000) for each row."""
        labels = self.labels(prompts)
        if uncond:
            labels = torch.full_like(labels, self.num_classes)
        return self.model.encode_labels(labels.to(self.device))

    def _fork_context(self, ctx: dict, n: int) -> dict:
        return fork_label_context(ctx, n)
