"""Reading published VAR checkpoint files: state dicts from `.pth` (weights only) or safetensors,
the model shape inferred from the tensors, and a strict load that names every misfit."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from varrl.checkpoint import CheckpointError, load_into
from varrl.models.var.transformer import VAR, VarConfig
from varrl.models.var.vqvae import VQVAE, VaeConfig

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.pth`/`.pt` file (loaded with weights_only=True: pickled code is refused) or a
    `.safetensors` file, as fp32 (integer tensors keep their type)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        sd = load_file(str(path))
    elif path.suffix in TORCH_SUFFIXES:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as e:
            raise CheckpointError(torch_load_refusal(path, e)) from None
    else:
        raise CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .pth or .safetensors")
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in sd.items()):
        raise CheckpointError(f"{path} does not hold a flat state dict (name -> tensor)")
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def torch_load_refusal(path: Path, err: Exception) -> str:
    """Why a torch file did not load with weights_only=True, and what to do: a file that holds Python
    objects besides tensors is re-saved as safetensors; anything else is not a (whole) torch file.
    torch's own text is not quoted: it suggests weights_only=False, which would run the file's code."""
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..) or, in the legacy format, a pickle stream (0x80 first).
    is_torch_file = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"
    if is_torch_file and "weights only load failed" in str(err).lower():
        return (f"{path} holds Python objects besides tensors, and varrl never runs pickled code from a "
                "checkpoint. Re-save the state dict alone as safetensors where the model was made "
                "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) and pass that file")
    return (f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: the file is damaged, cut short, "
            "or of another format); download or export it again, or pass a .safetensors file")


def _need(sd: dict, key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{where} is not a VAR checkpoint of the published layout: tensor {key!r} is missing")
    return sd[key]


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_var_config(sd: dict[str, torch.Tensor], where: str) -> VarConfig:
    """The transformer's shape from its tensors: width, code size, classes, vocabulary, depth,
    heads, MLP width, shared AdaLN, l2 attention and the grids (read off the `lvl_1L` buffer)."""
    C, Cvae = _need(sd, "word_embed.weight", where).shape
    depth = _count(sd, r"blocks\.(\d+)\.")
    if depth == 0:
        raise CheckpointError(f"{where} holds no transformer blocks (blocks.0.*)")
    scale = sd.get("blocks.0.attn.scale_mul_1H11")
    lvl = _need(sd, "lvl_1L", where).flatten().long()
    counts = torch.bincount(lvl).tolist()
    sides = [round(n**0.5) for n in counts]
    if any(s * s != n for s, n in zip(sides, counts)):
        raise CheckpointError(f"{where}: lvl_1L does not describe square grids (token counts {counts})")
    return VarConfig(depth=depth, width=C, heads=int(scale.shape[1]) if scale is not None else C // 64,
                     mlp_hidden=_need(sd, "blocks.0.ffn.fc1.weight", where).shape[0],
                     num_classes=_need(sd, "class_emb.weight", where).shape[0] - 1, patch_nums=tuple(sides),
                     shared_aln="shared_ada_lin.1.weight" in sd, attn_l2_norm=scale is not None,
                     vocab_size=_need(sd, "head.weight", where).shape[0], code_dim=Cvae)


def infer_vae_config(sd: dict[str, torch.Tensor], patch_nums: tuple[int, ...], where: str) -> VaeConfig:
    """The tokenizer's shape from its tensors; `patch_nums` come from the transformer it serves."""
    ch = _need(sd, "encoder.conv_in.weight", where).shape[0]
    n = _count(sd, r"encoder\.down\.(\d+)\.")
    mult = tuple(_need(sd, f"encoder.down.{i}.block.0.conv1.weight", where).shape[0] // ch for i in range(n))
    if "quantize.quant_resi.qresi.weight" in sd:
        sharing, K = "shared", 1
    elif (K := _count(sd, r"quantize\.quant_resi\.qresi_ls\.(\d+)\.")) > 0:
        sharing = "partial"
    else:
        sharing, K = "none", _count(sd, r"quantize\.quant_resi\.(\d+)\.")
    if K == 0:
        raise CheckpointError(f"{where} holds no residual convs (quantize.quant_resi.*): not a VAR tokenizer")
    ema = _need(sd, "quantize.ema_vocab_hit_SV", where)
    V, Cvae = _need(sd, "quantize.embedding.weight", where).shape
    return VaeConfig(vocab_size=V, code_dim=Cvae, ch=ch, ch_mult=mult,
                     num_res_blocks=_count(sd, r"encoder\.down\.0\.block\.(\d+)\."),
                     using_sa=f"encoder.down.{n - 1}.attn.0.qkv.weight" in sd,
                     using_mid_sa="encoder.mid.attn_1.qkv.weight" in sd, phi_sharing=sharing, phi_count=K,
                     patch_nums=tuple(patch_nums), ema_rows=ema.shape[0])


def build_var(sd: dict[str, torch.Tensor], where: str, cfg: VarConfig | None = None) -> VAR:
    cfg = cfg or infer_var_config(sd, where)
    model = VAR(cfg)
    load_into(model, sd, where)
    return model


def build_vae(sd: dict[str, torch.Tensor], patch_nums: tuple[int, ...], where: str,
              cfg: VaeConfig | None = None) -> VQVAE:
    cfg = cfg or infer_vae_config(sd, patch_nums, where)
    vae = VQVAE(cfg)
    load_into(vae, sd, where)
    return vae


def check_pair(var_cfg: VarConfig, vae_cfg: VaeConfig, where: str) -> None:
    """The transformer and the tokenizer must agree on the codes."""
    if (var_cfg.vocab_size, var_cfg.code_dim) != (vae_cfg.vocab_size, vae_cfg.code_dim):
        raise CheckpointError(f"{where}: the transformer predicts {var_cfg.vocab_size} codes of {var_cfg.code_dim} "
                              f"channels but the tokenizer has {vae_cfg.vocab_size} of {vae_cfg.code_dim}: "
                              "pass the tokenizer the checkpoint was trained with (vae_ch160v4096z32.pth)")
    if var_cfg.patch_px != vae_cfg.downsample:
        raise CheckpointError(f"{where}: the tokenizer downsamples by {vae_cfg.downsample}, the transformer "
                              f"expects {var_cfg.patch_px}")


def save_state_dict(module: torch.nn.Module, path: str | Path) -> Path:
    """Write a module's state dict in the published key layout: `.safetensors`, or a plain `.pth`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path
