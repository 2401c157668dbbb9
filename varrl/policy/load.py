"""Loading model directories: the shipped nano weights, exported runs, and checkpoints.

A model directory holds `config.json` ({"format": "varrl-nano/1", "tokenizer": {...},
"model": {...}}), `tokenizer.safetensors` and `model.safetensors`; a LoRA run's also holds
`adapter.safetensors`, with its settings in config.json's "lora" entry (load_policy puts the
adapters back on, unmerged). Published VAR checkpoints (a
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

from varrl.checkpoint import CheckpointError, atomic_write_text, load_into, load_tensors
from varrl.config import ConfigError, from_dict, to_dict
from varrl.models.nano import NanoConfig, NanoVAR
from varrl.models.tokenizer import TokenizerConfig, VQTokenizer
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
                vae: str | Path | None = None) -> NanoPolicy | VarPolicy:
    """The shipped nano policy (no argument), the model directory at `path`, or a published VAR
    checkpoint file with its tokenizer file `vae` (default: vae_ch160v4096z32.pth beside it)."""
    root = shipped_model_dir() if path is None else Path(path)
    if not root.exists():
        raise CheckpointError(f"checkpoint path not found: {root}")
    if is_checkpoint_file(root):
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
    return NanoPolicy(model.to(device), tok.to(device))


def _attach_saved_adapters(policy, root: Path, spec: dict) -> None:
    """A LoRA run's model directory: the base weights plus `adapter.safetensors`, put back on as
    adapters (not merged: the policy computes exactly what it computed in training)."""
    where = f"{root}/config.json"
    try:
        cfg = from_dict(LoraConfig, spec, "lora")
        cfg.check("lora")
        with torch.random.fork_rng(devices=[]):  # the adapters' random init is overwritten below
            attach_lora(policy, cfg, key=f"{where}: lora")
    except ConfigError as e:
        raise CheckpointError(f"{where}: bad lora entry: {e}") from e
    policy.lora.load_state_dict(_float32(load_tensors(root / ADAPTER_FILE)), f"{root}/{ADAPTER_FILE}")


def save_policy(policy: NanoPolicy, dest: str | Path, extra: dict | None = None, keep_base: bool = False) -> Path:
    """Write `policy` as a model directory that `load_policy(dest)` reads, atomically: files go to a
    temporary sibling first, which then replaces `dest` (a crash leaves the old directory whole).
    `keep_base`: the policy has adapters and `dest` already holds its frozen base (the caller
    knows it wrote it): link those files instead of writing the whole model again."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fmt = VAR_FORMAT if isinstance(policy, VarPolicy) else FORMAT
    lora = getattr(policy, "lora", None)
    meta = {"format": fmt, "tokenizer": to_dict(policy.tokenizer.cfg), "model": to_dict(policy.model.cfg),
            **({} if lora is None else {"lora": lora.describe()}), **(extra or {})}
    files = {"tokenizer": policy.tokenizer.state_dict(),
             "model": policy.model.state_dict() if lora is None else lora.base_state_dict()}
    if lora is not None:
        files["adapter"] = lora.state_dict()
    for name, sd in files.items():
        if keep_base and lora is not None and name != "adapter" and (dest / f"{name}.safetensors").exists():
            os.link(dest / f"{name}.safetensors", tmp / f"{name}.safetensors")
            continue
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp / f"{name}.safetensors"))
    atomic_write_text(tmp / "config.json", json.dumps(meta, indent=1))
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
