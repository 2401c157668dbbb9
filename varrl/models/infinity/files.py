"""Reading and writing Infinity transformer files in the released layouts, strictly.

Three layouts: a `.pth` flat state dict (`infinity_2b_reg.pth`; loaded with weights_only=True, so
a pickled payload is refused), one `.safetensors` file, or a folder of safetensors shards with
their index (`infinity_8b_weights/`: `model.safetensors.index.json` maps every tensor to its
shard). The architecture is read off the tensors; a missing, unexpected or misshaped tensor is an
error that names it.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from varrl.checkpoint import CheckpointError, load_into
from varrl.models.infinity.transformer import Infinity, InfinityConfig

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
INDEX_NAMES = ("model.safetensors.index.json",)
# Buffers some training checkpoints carry that the model derives itself (the official loader drops them too).
DERIVED = ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen")


def find_index(folder: Path) -> Path | None:
    for name in INDEX_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors.index.json"))
    return found[0] if found else None


def is_infinity_path(path: str | Path) -> bool:
    """Whether `path` holds an Infinity transformer (read off the tensor names, nothing loaded)."""
    path = Path(path)
    try:
        if path.is_dir():
            index = find_index(path)
            return index is not None and "cfg_uncond" in json.loads(index.read_text()).get("weight_map", {})
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                return "cfg_uncond" in f.keys()
        if path.suffix in TORCH_SUFFIXES:
            return "cfg_uncond" in _torch_load(path)
    except (OSError, ValueError, CheckpointError, json.JSONDecodeError):
        return False
    return False


def _torch_load(path: Path) -> dict:
    try:
        try:  # memory-mapped: a 2B file is not read into memory twice
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} could not be loaded as weights only ({first[:200]}). varrl never runs "
                              "pickled code from a checkpoint: re-save the state dict alone (torch.save("
                              "model.state_dict(), ...)) or convert it to safetensors") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in sd.items()):
        raise CheckpointError(f"{path} does not hold a flat state dict (name -> tensor)")
    return sd


def _read_safetensors(path: Path, keys=None) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in (f.keys() if keys is None else keys)}
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None


def read_infinity_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth`, a `.safetensors` file or a folder of shards with its index."""
    path = Path(path)
    if path.is_dir():
        index = find_index(path)
        if index is None:
            raise CheckpointError(f"{path} is a folder without a safetensors index (model.safetensors.index.json)")
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index (needs a 'weight_map'): {e}") from None
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            shards.setdefault(shard, []).append(key)
        sd = {}
        for shard, keys in shards.items():
            if not (path / shard).is_file():
                raise CheckpointError(f"{index} names shard {shard}, which is not in {path}")
            sd.update(_read_safetensors(path / shard, keys))
        return sd
    if not path.is_file():
        raise CheckpointError(f"Infinity checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _torch_load(path)
    raise CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .pth, .safetensors or a "
                          "folder of safetensors shards with its index")


def _need(sd: dict, key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{where} is not an Infinity checkpoint of the released layout: "
                              f"tensor {key!r} is missing")
    return sd[key]


def infer_infinity_config(sd: dict[str, torch.Tensor], where: str) -> InfinityConfig:
    """The transformer's shape from its tensors (block layout, depth, width, heads, MLP, bits, text)."""
    rx = re.compile(r"block_chunks\.(\d+)\.module\.(\d+)\.")
    chunked = {(int(m.group(1)), int(m.group(2))) for k in sd if (m := rx.match(k))}
    flat = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if chunked:
        chunks = len({c for c, _ in chunked})
        depth = len(chunked)
        first = "block_chunks.0.module.0."
    elif flat:
        chunks, depth, first = 1, len(flat), "blocks.0."
    else:
        raise CheckpointError(f"{where} holds no transformer blocks (block_chunks.*.module.* or blocks.*)")
    C, d = _need(sd, "word_embed.weight", where).shape
    return InfinityConfig(depth=depth, width=C, heads=_need(sd, first + "sa.scale_mul_1H11", where).shape[1],
                          mlp_hidden=_need(sd, first + "ffn.fc1.weight", where).shape[0], bits=d,
                          text_dim=_need(sd, "text_norm.weight", where).shape[0],
                          text_maxlen=_need(sd, "cfg_uncond", where).shape[0],
                          pool_heads=_need(sd, "text_proj_for_sos.ca.mat_q", where).shape[1], block_chunks=chunks)


def build_infinity(sd: dict[str, torch.Tensor], where: str, cfg: InfinityConfig | None = None) -> Infinity:
    """An Infinity model holding the tensors of `sd` (fp32), loaded strictly."""
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items() if k not in DERIVED}
    cfg = cfg or infer_infinity_config(sd, where)
    model = Infinity(cfg)
    load_into(model, sd, where)
    return model


def save_infinity(model: Infinity, path: str | Path, shard_bytes: int | None = None) -> Path:
    """Write the model in a released layout: `.pth`, `.safetensors`, or (a folder path with
    `shard_bytes`) safetensors shards of about that size plus their index."""
    path = Path(path)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if shard_bytes is not None:
        path.mkdir(parents=True, exist_ok=True)
        shards, cur, size = [], {}, 0
        for k, v in sd.items():
            if cur and size + v.numel() * v.element_size() > shard_bytes:
                shards.append(cur)
                cur, size = {}, 0
            cur[k] = v
            size += v.numel() * v.element_size()
        shards.append(cur)
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / name))
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(v.numel() * v.element_size() for v in sd.values())
        (path / INDEX_NAMES[0]).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                      indent=1))
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path
