"""A tiny random-weight VAR (depth 2) and VQ-VAE (channel width 32, the published key layout),
written as checkpoint files the way the published ones are (plain state dicts)."""

from __future__ import annotations

import torch

from varrl.models.var import VAR, VQVAE, VaeConfig, VarConfig
from varrl.models.var.files import save_state_dict

TINY_PATCH_NUMS = (1, 2, 3, 4)  # 64 px images
TINY_VAR = dict(depth=2, width=64, heads=2, mlp_hidden=128, num_classes=10, patch_nums=TINY_PATCH_NUMS,
                vocab_size=64, code_dim=8)
TINY_VAE = dict(vocab_size=64, code_dim=8, ch=32, patch_nums=TINY_PATCH_NUMS)


def build_tiny_var(seed: int = 0, shared_aln: bool = False, **kw) -> tuple[VAR, VQVAE]:
    torch.manual_seed(seed)
    model, vae = VAR(VarConfig(**{**TINY_VAR, "shared_aln": shared_aln, **kw})), VQVAE(VaeConfig(**TINY_VAE))
    with torch.no_grad():  # away from the init's near-uniform logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        model.head.weight.mul_(4)
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model, vae


def write_tiny_var(folder, suffix: str = ".pth", seed: int = 0, **kw):
    """Files var_tiny<suffix> and vae_tiny<suffix> in folder; returns their paths."""
    model, vae = build_tiny_var(seed, **kw)
    return save_state_dict(model, folder / f"var_tiny{suffix}"), save_state_dict(vae, folder / f"vae_tiny{suffix}")
