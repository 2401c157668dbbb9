"""Loading model directories: the shipped nano weights, exported runs, and checkpoints.

A model directory holds `config.json` ({"format": "varrl-nano/1", "tokenizer": {...},
"model": {...}}), `tokenizer.safetensors` and `model.safetensors`. Published VAR checkpoints (a
`.pth`/`.safetensors` file and its tokenizer) and VAR model directories ("varrl-var/1") load
through varrl.policy.var_load; the kind is read off the path.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from varrl.checkpoint import (
    CheckpointError,
    DamagedCheckpointError,
    atomic_write_text,
    check_intact,
    load_into,
    load_tensors,
    write_manifest,
)
from varrl.config import ConfigError, from_dict, to_dict
from varrl.data.prompt_form import PromptForm
from varrl.models.infinity.files import is_infinity_path
from varrl.models.nano import NanoConfig, NanoVAR
from varrl.models.tokenizer import TokenizerConfig, VQTokenizer
from varrl.policy.infinity_load import is_infinity_dir_meta, load_infinity_dir, load_infinity_file, save_infinity_policy
from varrl.policy.infinity_policy import InfinityPolicy
from varrl.policy.lora import LoraConfig, attach_lora
from varrl.policy.nano_policy import NanoPolicy
from varrl.policy.var_load import VAR_FORMAT, is_checkpoint_file, load_var_dir, load_var_file
from varrl.policy.var_policy import VarPolicy

FORMAT = "varrl-nano/1"
ADAPTER_FILE = "adapter.safetensors"
"""a LoRA run's adapter tensors, beside the base model's model.safetensors (config.json names them in "lora")"""


def shipped_model_dir() -> Path:
    return Path(str(resources.files("varrl").joinpath("assets/nano")))


def load_policy(path: str | Path | None = None, device: str | torch.device = "cpu",
                vae: str | Path | None = None, text_encoder: str | Path | None = None, schedule: str | None = None,
                aspect_ratio: float | None = None, dtype: str | None = None) -> NanoPolicy | VarPolicy | InfinityPolicy:
    """The shipped nano policy (no argument), the model directory at `path`, a published VAR
    checkpoint file with its tokenizer file `vae` (default: vae_ch160v4096z32.pth beside it), or a
    released Infinity transformer (`.pth`, `.safetensors`, or a folder of shards with its index)
    with its BSQ tokenizer file `vae`, the Flan-T5 folder `text_encoder`, the scale `schedule`
    ("1M" = 1024 px .. "0.06M" = 256 px), `aspect_ratio` (height / width) and compute `dtype`
    ("float32", or "bfloat16": autocast, weights stay fp32)."""
    root = shipped_model_dir() if path is None else Path(path)
    if not root.exists():
        raise CheckpointError(f"checkpoint path not found: {root}")
    if is_infinity_path(root):
        return load_infinity_file(root, vae, text_encoder, schedule or "1M", 1.0 if aspect_ratio is None else
                                  aspect_ratio, device, dtype or "float32")
    infinity_args = {"text_encoder": text_encoder, "schedule": schedule, "aspect_ratio": aspect_ratio}
    if is_checkpoint_file(root):
        _only_infinity(root, infinity_args, dtype)
        return load_var_file(root, vae, device)
    if root.is_dir() and not (root / "config.json").exists():
        for sub in ("last", "export"):  # an RL run dir holds last/, a pretraining run dir export/
            if (root / sub / "config.json").exists():
                root = root / sub
                break
    cfg_file = root / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{root} is not a varrl model directory: config.json is missing "
                              "(expected config.json, tokenizer.safetensors, model.safetensors)")
    try:
        meta = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e
    damage = check_intact(root, hashes=False)  # sizes only: hashing gigabytes at every load costs seconds
    if damage is not None:
        raise DamagedCheckpointError(f"model directory {root} is damaged: {damage}; copy it again from its source")
    if is_infinity_dir_meta(meta):
        policy = load_infinity_dir(root, meta, device, vae, text_encoder, schedule, aspect_ratio, dtype)
    else:
        _only_infinity(root, infinity_args, dtype)
        if meta.get("format") == VAR_FORMAT:
            policy = load_var_dir(root, meta, device)
        elif meta.get("format") != FORMAT:
            raise CheckpointError(f"{cfg_file}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
        else:
            policy = _load_nano_dir(root, meta, device)
    if "lora" in meta:
        _attach_saved_adapters(policy, root, meta["lora"])
    return policy


def _load_nano_dir(root: Path, meta: dict, device) -> NanoPolicy:
    cfg_file = root / "config.json"
    try:
        tok_cfg = from_dict(TokenizerConfig, meta["tokenizer"], "tokenizer")
        model_cfg = from_dict(NanoConfig, meta["model"], "model")
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"{cfg_file}: bad model config: {e}") from e
    tok = VQTokenizer(tok_cfg)
    model = NanoVAR(model_cfg, tok_cfg.schedule(), tok_cfg.vocab_size, tok_cfg.code_dim)
    load_into(tok, _float32(load_tensors(root / "tokenizer.safetensors")), f"{root}/tokenizer.safetensors")
    load_into(model, _float32(load_tensors(root / "model.safetensors")), f"{root}/model.safetensors")
    tok.eval()
    model.eval()
    return NanoPolicy(model.to(device), tok.to(device), PromptForm.from_meta(meta))


def _attach_saved_adapters(policy, root: Path, spec: dict) -> None:
    """A LoRA run's model directory: the base weights plus `adapter.safetensors`, put back on as
    adapters (not merged: the policy computes exactly what it computed in training)."""
    where = f"{root}/config.json"
    try:
        cfg = from_dict(LoraConfig, spec, "lora")
        with torch.random.fork_rng(devices=[]):  # the adapters' random init is overwritten below
            attach_lora(policy, cfg, key=f"{where}: lora")
    except ConfigError as e:
        raise CheckpointError(f"{where}: bad lora entry: {e}") from e
    policy.lora.load_state_dict(_float32(load_tensors(root / ADAPTER_FILE)), f"{root}/{ADAPTER_FILE}")


def _only_infinity(root: Path, given: dict, dtype: str | None) -> None:
    named = [k for k, v in given.items() if v is not None] + (["dtype"] if dtype not in (None, "float32") else [])
    if named:
        raise CheckpointError(f"{root} is not an Infinity model: policy.{named[0]} applies to Infinity models only "
                              "(leave it unset)")


def save_policy(policy: NanoPolicy | InfinityPolicy, dest: str | Path, extra: dict | None = None,
                keep_base: bool = False, model_state: dict[str, torch.Tensor] | None = None,
                adapter_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `policy` as a model directory that `load_policy(dest)` reads, atomically: files go to a
    temporary sibling first, which then replaces `dest` (a crash leaves the old directory whole).
    With LoRA adapters: the base in its own layout plus adapter.safetensors; `keep_base`: `dest`
    already holds this frozen base (the caller wrote it), so link those files instead of rewriting.
    `model_state`, `adapter_state`: the transformer's full state dict (with LoRA: the base's, in its
    own layout, and the adapters') when the model itself holds shards (FSDP)."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    lora = getattr(policy, "lora", None)
    extra = {**({} if lora is None else {"lora": lora.describe()}), **(extra or {})}
    if keep_base and lora is not None:
        for name in ("model", "tokenizer"):
            try:
                os.link(dest / f"{name}.safetensors", tmp / f"{name}.safetensors")
            except FileNotFoundError:  # removed by hand since it was written: the base is written below
                pass
    if (tmp / "model.safetensors").exists():  # the base, linked above
        weights = None
    elif model_state is not None:
        weights = model_state
    else:
        weights = policy.model.state_dict() if lora is None else lora.base_state_dict()  # the model's own layout
    if isinstance(policy, InfinityPolicy):
        save_infinity_policy(policy, tmp, extra, weights)
    else:
        fmt = VAR_FORMAT if isinstance(policy, VarPolicy) else FORMAT
        meta = {"format": fmt, "tokenizer": to_dict(policy.tokenizer.cfg), "model": to_dict(policy.model.cfg), **extra}
        form = getattr(policy, "prompt_form", None)
        if form is not None and "prompts" not in meta:  # what it was trained on still holds after RL
            meta["prompts"] = form.to_dict()
        for name, sd in (("tokenizer", policy.tokenizer.state_dict()), ("model", weights)):
            if not (tmp / f"{name}.safetensors").exists():  # else linked above
                save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp / f"{name}.safetensors"))
        atomic_write_text(tmp / "config.json", json.dumps(meta, indent=1))
    if lora is not None:
        adapters = lora.state_dict() if adapter_state is None else adapter_state
        save_file({k: v.detach().contiguous().cpu() for k, v in adapters.items()}, str(tmp / ADAPTER_FILE))
    write_manifest(tmp)  # last: it vouches for the finished folder
    old = dest.with_name(f".{dest.name}.old")
    if dest.exists():
        if old.exists():
            shutil.rmtree(old)
        dest.rename(old)
    tmp.rename(dest)
    if old.exists():
        shutil.rmtree(old)
    return dest


def _float32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Weights may be stored in half precision to keep the repository small; compute is fp32.
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
