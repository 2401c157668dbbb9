"""Loading VAR policies: a published checkpoint file plus its tokenizer file, or a varrl model
directory of format `varrl-var/1` (what training writes: config.json, model.safetensors and
tokenizer.safetensors, both in the published key layout)."""

from __future__ import annotations

from pathlib import Path

import torch

from varrl.checkpoint import CheckpointError, load_tensors
from varrl.config import ConfigError, from_dict
from varrl.models.var.files import TORCH_SUFFIXES, build_vae, build_var, check_pair, read_state_dict
from varrl.models.var.transformer import VarConfig
from varrl.models.var.vqvae import VaeConfig
from varrl.policy.var_policy import VarPolicy

VAR_FORMAT = "varrl-var/1"
DEFAULT_VAE = "vae_ch160v4096z32.pth"
CHECKPOINT_SUFFIXES = (*TORCH_SUFFIXES, ".safetensors")


def is_checkpoint_file(path: Path) -> bool:
    return path.is_file() and path.suffix in CHECKPOINT_SUFFIXES


def load_var_file(path: str | Path, vae: str | Path | None = None, device: str | torch.device = "cpu") -> VarPolicy:
    """A published VAR checkpoint (`var_d16.pth` ..) and its tokenizer (default: `vae_ch160v4096z32.pth`
    in the same folder), both loaded strictly; shapes are read off the files."""
    path = Path(path)
    if vae is None:
        vae = path.parent / DEFAULT_VAE
        if not vae.exists():
            raise CheckpointError(f"{path} needs its tokenizer: put {DEFAULT_VAE} beside it or pass its path "
                                  "(policy.vae=... in a config, vae=... in load_policy)")
    model = build_var(read_state_dict(path), str(path))
    tok = build_vae(read_state_dict(vae), model.cfg.patch_nums, str(vae))
    check_pair(model.cfg, tok.cfg, f"{path} with {vae}")
    return _ready(model, tok, device)


def load_var_dir(root: Path, meta: dict, device: str | torch.device = "cpu") -> VarPolicy:
    cfg_file = root / "config.json"
    try:
        model_cfg = from_dict(VarConfig, meta["model"], "model")
        tok_cfg = from_dict(VaeConfig, meta["tokenizer"], "tokenizer")
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{cfg_file}: bad model config: {e}") from e
    model = build_var(_float32(load_tensors(root / "model.safetensors")), f"{root}/model.safetensors", model_cfg)
    tok = build_vae(_float32(load_tensors(root / "tokenizer.safetensors")), model_cfg.patch_nums,
                    f"{root}/tokenizer.safetensors", tok_cfg)
    check_pair(model.cfg, tok.cfg, str(root))
    return _ready(model, tok, device)


def _ready(model, tok, device) -> VarPolicy:
    model.eval()
    tok.eval()
    return VarPolicy(model.to(device), tok.to(device))


def _float32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
