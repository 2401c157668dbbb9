"""Loading Infinity policies: the released transformer file (or shard folder), its BSQ tokenizer file
and the Flan-T5 folder; or a varrl model directory of format `varrl-infinity/1` (what training
writes: config.json and model.safetensors in the released key layout; the tokenizer and text
encoder are named by path in config.json, since training never changes them)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from varrl.checkpoint import CheckpointError, atomic_write_text, load_tensors
from varrl.config import ConfigError, from_dict, to_dict
from varrl.models.infinity.files import build_infinity, read_infinity_state_dict
from varrl.models.infinity.schedules import ScheduleError, budget_name, infinity_schedule, rope_grid, template_ratio
from varrl.models.infinity.transformer import InfinityConfig
from varrl.policy.infinity_policy import InfinityPolicy

INFINITY_FORMAT = "varrl-infinity/1"
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def compute_dtype(name: str) -> torch.dtype | None:
    if name not in DTYPES:
        raise ConfigError(f"policy.dtype={name!r}: choose float32 or bfloat16", "policy.dtype")
    return DTYPES[name]


def load_infinity_file(path: str | Path, vae: str | Path | None, text_encoder: str | Path | None,
                       schedule: str = "1M", aspect_ratio: float = 1.0, device: str | torch.device = "cpu",
                       dtype: str = "float32") -> InfinityPolicy:
    """A released Infinity transformer with its tokenizer file and T5 folder, all loaded strictly."""
    path = Path(path)
    sd = read_infinity_state_dict(path)
    model = build_infinity(sd, str(path))
    del sd
    return _assemble(model, vae, text_encoder, schedule, aspect_ratio, device, dtype, str(path))


def load_infinity_dir(root: Path, meta: dict, device: str | torch.device = "cpu", vae=None, text_encoder=None,
                      schedule: str | None = None, aspect_ratio: float | None = None,
                      dtype: str | None = None) -> InfinityPolicy:
    """A model directory written by `save_infinity_policy`; arguments given here win over config.json."""
    cfg_file = root / "config.json"
    try:
        model_cfg = from_dict(InfinityConfig, meta["model"], "model")
        src = meta["sources"]
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{cfg_file}: bad model config: {e}") from e
    model = build_infinity(load_tensors(root / "model.safetensors"), f"{root}/model.safetensors", model_cfg)
    return _assemble(model, vae or src["vae"], text_encoder or src["text_encoder"], schedule or src["schedule"],
                     aspect_ratio if aspect_ratio is not None else src["aspect_ratio"], device,
                     dtype or src.get("dtype", "float32"), src.get("model", str(root)))


def _assemble(model, vae, text_encoder, schedule, aspect_ratio, device, dtype, where: str) -> InfinityPolicy:
    if vae is None:
        raise CheckpointError(f"{where} needs its BSQ tokenizer file (infinity_vae_d32reg.pth for Infinity-2B): "
                              "pass vae=... to load_policy, or policy.vae=... in a config")
    if text_encoder is None:
        raise CheckpointError(f"{where} needs the Flan-T5-XL folder (tokenizer + encoder): pass text_encoder=... "
                              "to load_policy, or policy.text_encoder=... in a config")
    try:
        name, ratio, rope_hw = budget_name(schedule), template_ratio(aspect_ratio), rope_grid(aspect_ratio)
    except ScheduleError as e:
        raise ConfigError(f"{e}", "policy.schedule") from None
    amp = compute_dtype(dtype)
    from varrl.models.infinity.bsq import load_bsq_vae
    from varrl.models.infinity.text import load_text_encoder

    tok_vae = load_bsq_vae(vae)
    sched = infinity_schedule(name, ratio, tok_vae.downsample)
    token_bits = tok_vae.token_bits
    if token_bits != model.cfg.bits:
        raise CheckpointError(f"{where} predicts {model.cfg.bits} bits per token but {vae} gives {token_bits}: "
                              "pass the tokenizer the model was trained with (Infinity-2B: infinity_vae_d32reg.pth; "
                              "Infinity-8B: infinity_vae_d56_f8_14_patchify.pth)")
    text_dtype = torch.bfloat16 if (amp is not None and torch.device(device).type == "cuda") else torch.float32
    tokenizer, encoder = load_text_encoder(text_encoder, device, text_dtype)
    width = getattr(getattr(encoder, "config", None), "d_model", model.cfg.text_dim)
    if width != model.cfg.text_dim:
        raise CheckpointError(f"{text_encoder} gives {width}-channel text features but {where} reads "
                              f"{model.cfg.text_dim} (Infinity uses Flan-T5-XL: 2048)")
    model.eval()
    tok_vae.eval()
    sources = {"model": where, "vae": str(Path(vae).resolve()), "text_encoder": str(Path(text_encoder).resolve()),
               "schedule": name, "aspect_ratio": ratio, "dtype": dtype}
    return InfinityPolicy(model.to(device), tok_vae.to(device), tokenizer, encoder, sched, rope_hw, amp, sources)


def save_infinity_policy(policy: InfinityPolicy, folder: Path, extra: dict | None = None,
                         model_state: dict[str, torch.Tensor] | None = None) -> None:
    """Write config.json + model.safetensors (released key layout) into an existing empty folder;
    `model_state` replaces the model's own state dict (the full one of a sharded model)."""
    sd = {k: v.detach().contiguous().cpu() for k, v in (model_state or policy.model.state_dict()).items()}
    save_file(sd, str(folder / "model.safetensors"))
    meta = {"format": INFINITY_FORMAT, "model": to_dict(policy.model.cfg), "sources": policy.sources, **(extra or {})}
    atomic_write_text(folder / "config.json", json.dumps(meta, indent=1))


def is_infinity_dir_meta(meta: dict) -> bool:
    return meta.get("format") == INFINITY_FORMAT

