"""Infinity's BSQ multi-scale tokenizer (the "VAE"): loading the released files and turning bits
into transformer inputs, latents and images.

Official names (FoundationVision/Infinity) -> ours:
- `bsq_vae/flux_vqgan.py: AutoEncoder` -> `BSQVAE`; its `encoder` / `decoder` -> `bsq_codec.Encoder`
  / `Decoder` (same parameter names); `AutoEncoder.decode` (clamp to [-1, 1]) -> `decode_latent`
  (and mapped to [0, 1]).
- `bsq_vae/vae.py: vae_model(..., codebook_dim, patch_size, encoder_ch_mult, decoder_ch_mult)` and
  `tools/run_infinity.py: load_visual_tokenizer` -> `load_bsq_vae` + `BSQVAEConfig` / `PRESETS`.
- `multiscale_bsq.py: BSQ.quantize_new` -> `bsq_quant.sign_quantize`; `BSQ.indices_to_codes(...,
  'bit_label')` -> `bsq_quant.codes_from_bits`; `MultiScaleBSQ.z_interplote_up / _down` (trilinear /
  area) -> used in `bsq_quant.accumulate` / `multiscale_bits`.
- `bitwise_self_correction.py: BitwiseSelfCorrection.flip_requant` (no flips) -> `encode_bits`
  (the tokens the transformer is trained on, with the trainer's pixel_unshuffle for patchify).
- the bits -> codes -> running sum -> next input part of `infinity.py: autoregressive_infer_cfg`
  (`summed_codes`, `last_stage`, patchify's pixel_shuffle / pixel_unshuffle) -> `next_inputs`,
  `summed_codes`, `decode_bits`.

Units. `schedule` is the transformer's list of token grids (a ScaleSchedule or (h, w) pairs; the
last is the full token grid). Without patchify a token is a latent cell (d bits, 16 px for the
released f16 tokenizers); with the 2x2 spatial patchify (Infinity-8B: an f8 tokenizer with
d = 14, `infinity_vae_d56_f8_14_patchify.pth`) a token is 2x2 cells, 4d = 56 bits, 16 px, and the
tokenizer works on grids twice as fine. `codebook_dim` is d (bits per latent cell), `token_bits`
the bits per token, `downsample` the pixels per token side.

Files: a `.pth` holding `{"vae": state_dict}` as released (the official loader reads that entry)
or a flat state dict, or a `.safetensors` file; torch files are read with weights_only=True (a
pickled payload is refused). Loading is strict: a missing, unexpected or misshaped tensor is an
error that names it. Two tolerances, both the official loader's: conv / GroupNorm weights may be
stored without their wrapper level (`encoder.conv_in.weight` for `encoder.conv_in.conv.weight`),
and the quantizer's derived `quantizer.lfq.mask` / `quantize.lfq.mask` buffers may be present
(their length must be d) or absent.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open

from varrl.checkpoint import CheckpointError, load_into
from varrl.models.infinity import bsq_quant as Q
from varrl.models.infinity.bsq_codec import Decoder, Encoder


@dataclass(frozen=True)
class BSQVAEConfig:
    """Shape of a BSQ tokenizer (defaults: the released f16 ones, e.g. infinity_vae_d32reg.pth)."""

    codebook_dim: int = 32
    """d: latent channels = bits per latent cell"""
    ch: int = 128
    """base channel width"""
    ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    """encoder width per level (x ch)"""
    dec_ch_mult: tuple[int, ...] = (1, 2, 4, 4, 4)
    """decoder width per level (x ch)"""
    num_res_blocks: int = 2
    """residual blocks per encoder level (the decoder has one more)"""
    patch_size: int = 16
    """pixels per latent cell side (2 ** number of stride-2 levels)"""
    patchify: bool = False
    """the transformer reads 2x2 latent cells as one token (Infinity-8B)"""

    @property
    def token_bits(self) -> int:
        return self.codebook_dim * (4 if self.patchify else 1)

    @property
    def downsample(self) -> int:
        return self.patch_size * (2 if self.patchify else 1)


_F16 = BSQVAEConfig()
PRESETS: dict[str, BSQVAEConfig] = {
    "infinity_vae_d16": replace(_F16, codebook_dim=16),
    "infinity_vae_d24": replace(_F16, codebook_dim=24),
    "infinity_vae_d32": _F16,
    "infinity_vae_d32reg": _F16,
    "infinity_vae_d64": replace(_F16, codebook_dim=64),
    "infinity_vae_d56_f8_14_patchify": BSQVAEConfig(codebook_dim=14, ch_mult=(1, 2, 4, 4), dec_ch_mult=(1, 2, 4, 4),
                                                    patch_size=8, patchify=True),
}
PRESETS["infinity_2b"] = PRESETS["infinity_vae_d32reg"]
PRESETS["infinity_8b"] = PRESETS["infinity_vae_d56_f8_14_patchify"]
PRESETS["infinity_125m"] = PRESETS["infinity_vae_d32"]  # 32-bit tokens; load_policy checks it against the model
MASK_KEYS = ("quantizer.lfq.mask", "quantize.lfq.mask")
"""the bit-weight buffers of the official quantizer (registered under two names), derived from d"""


class BSQVAE(nn.Module):
    """Encoder, decoder and the multi-scale bitwise quantizer of an Infinity tokenizer."""

    def __init__(self, cfg: BSQVAEConfig):
        super().__init__()
        n = (cfg.patch_size.bit_length() - 1) if cfg.patch_size > 0 else -1
        if cfg.patch_size != 2**n or n >= min(len(cfg.ch_mult), len(cfg.dec_ch_mult)):
            raise ValueError(f"patch_size {cfg.patch_size} must be a power of 2 below 2 ** levels "
                             f"({len(cfg.ch_mult)} encoder / {len(cfg.dec_ch_mult)} decoder levels)")
        self.cfg = cfg
        self.encoder = Encoder(cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.codebook_dim, n)
        self.decoder = Decoder(cfg.ch, cfg.dec_ch_mult, cfg.num_res_blocks, cfg.codebook_dim, n)

    @property
    def codebook_dim(self) -> int:
        """d: bits per latent cell"""
        return self.cfg.codebook_dim

    @property
    def patchify(self) -> bool:
        return self.cfg.patchify

    @property
    def token_bits(self) -> int:
        """bits per transformer token: d, or 4d with patchify"""
        return self.cfg.token_bits

    @property
    def downsample(self) -> int:
        """pixels per token side (the tokenizer's own, x2 with patchify)"""
        return self.cfg.downsample

    # -- grids -----------------------------------------------------------------------------------------
    def latent_grids(self, schedule) -> list[Q.Grid]:
        """The tokenizer's grids of a token schedule (twice as fine with patchify)."""
        f = 2 if self.patchify else 1
        return [(h * f, w * f) for h, w in Q.grids_of(schedule)]

    def _cell_codes(self, bits_list: list[torch.Tensor], schedule) -> tuple[list[torch.Tensor], list[Q.Grid]]:
        grids = Q.grids_of(schedule)
        if not 1 <= len(bits_list) <= len(grids):
            raise ValueError(f"need 1..{len(grids)} steps of bits for this {len(grids)}-step schedule, "
                             f"got {len(bits_list)}")
        codes = []
        for t, (bits, (h, w)) in enumerate(zip(bits_list, grids)):
            if bits.ndim != 3 or bits.shape[1:] != (h * w, self.token_bits):
                raise ValueError(f"step {t + 1}: bits must be [B, {h}*{w}, {self.token_bits}], got {tuple(bits.shape)}")
            cells = Q.unpatchify_bits(bits, h, w) if self.patchify else bits.reshape(bits.shape[0], h, w, -1)
            codes.append(Q.codes_5d(cells))
        return codes, self.latent_grids(grids)

    # -- bits -> transformer inputs, latents, images --------------------------------------------------------
    def next_inputs(self, bits_list: list[torch.Tensor], schedule) -> list[torch.Tensor]:
        """The transformer's input [B, token_bits, h_{t+1}, w_{t+1}] at every step after the first
        from the bits [B, h_t*w_t, token_bits] of steps 1..n: min(n, T-1) maps, fp32."""
        codes, grids = self._cell_codes(bits_list, schedule)
        return Q.accumulate(codes, grids, self.patchify)[0]

    def summed_codes(self, bits_list: list[torch.Tensor], schedule) -> torch.Tensor:
        """The latent [B, d, H_lat, W_lat] (fp32): the sum of every step's codes upsampled to the last
        grid (a prefix of the steps gives the coarse preview)."""
        codes, grids = self._cell_codes(bits_list, schedule)
        return Q.accumulate(codes, grids, self.patchify)[1]

    def decode_latent(self, z_BdHW: torch.Tensor) -> torch.Tensor:
        """Image [B, 3, H, W] in [0, 1] of a latent (the official decode clamps to [-1, 1]). Runs in the
        caller's autocast context (the official sampler decodes under bf16 autocast)."""
        param = self.decoder.conv_in.conv.weight
        img = self.decoder(z_BdHW.to(device=param.device, dtype=param.dtype))
        return (img.clamp(-1, 1) + 1) / 2

    def decode_bits(self, bits_list: list[torch.Tensor], schedule) -> torch.Tensor:
        """Image [B, 3, H, W] in [0, 1] of the bits of steps 1..n (n < T: the coarse preview)."""
        return self.decode_latent(self.summed_codes(bits_list, schedule))

    # -- images -> bits -------------------------------------------------------------------------------------
    def encode_latent(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """The encoder's latent [B, d, H/patch, W/patch] (fp32) of images in [0, 1]."""
        param = self.encoder.conv_in.conv.weight
        x = img_B3HW.to(device=param.device, dtype=param.dtype)
        with torch.autocast(param.device.type, enabled=False):  # the official encoder runs in fp32 under any autocast
            return self.encoder(x + x - 1).float()  # [0, 1] -> [-1, 1] as the official transform does

    def encode_bits(self, img_B3HW: torch.Tensor, schedule) -> list[torch.Tensor]:
        """The tokens of images **in [0, 1]** (RGB, [B, 3, H, W] with H, W = last grid x downsample):
        per step a LongTensor [B, h_t*w_t, token_bits] in {0, 1}."""
        grids = Q.grids_of(schedule)
        want = (grids[-1][0] * self.downsample, grids[-1][1] * self.downsample)
        if img_B3HW.ndim != 4 or img_B3HW.shape[1] != 3 or tuple(img_B3HW.shape[-2:]) != want:
            raise ValueError(f"images must be [B, 3, {want[0]}, {want[1]}] for this schedule (last grid {grids[-1]} "
                             f"x {self.downsample} px), got {tuple(img_B3HW.shape)}")
        cells = Q.multiscale_bits(self.encode_latent(img_B3HW), self.latent_grids(grids))
        if self.patchify:
            return [Q.patchify_bits(b) for b in cells]
        return [b.reshape(b.shape[0], -1, b.shape[-1]) for b in cells]


# -- files ------------------------------------------------------------------------------------------------
_CONV_PARENTS = {"conv_in", "conv_out", "conv1", "conv2", "nin_shortcut"}
_NORM_PARENTS = {"norm1", "norm2", "norm_out"}


def canonical_key(key: str) -> str:
    """The wrapped name of a conv / GroupNorm parameter stored without its wrapper level."""
    parts = key.split(".")
    if len(parts) >= 2 and parts[-1] in ("weight", "bias"):
        parent, grand = parts[-2], parts[-3] if len(parts) >= 3 else ""
        if parent in _CONV_PARENTS or (parent == "conv" and grand in ("downsample", "upsample")):
            return ".".join(parts[:-1] + ["conv", parts[-1]])
        if parent in _NORM_PARENTS:
            return ".".join(parts[:-1] + ["norm", parts[-1]])
    return key


def read_bsq_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tokenizer's tensors (fp32) from a released `.pth` ({"vae": ...} or flat) or `.safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"BSQ tokenizer file not found: {path} (Infinity-2B uses infinity_vae_d32reg.pth)")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), "pt") as f:
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path} could not be loaded as weights only ({first[:200]}). varrl never runs "
                                  "pickled code from a checkpoint: re-save the tokenizer's state dict alone "
                                  "(torch.save({'vae': vae.state_dict()}, ...)) or convert it to safetensors") from None
        if isinstance(sd, dict) and isinstance(sd.get("vae"), dict):
            sd = sd["vae"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in sd.items()):
        raise CheckpointError(f"{path} does not hold a BSQ tokenizer state dict (name -> tensor, or {{'vae': ...}})")
    out = {}
    for k, v in sd.items():
        ck = canonical_key(k)
        if ck in out:
            raise CheckpointError(f"{path} holds tensor {ck!r} twice (also as {k!r})")
        out[ck] = v.float() if v.is_floating_point() else v
    return out


def _need(sd: dict, key: str, where: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{where} is not a BSQ tokenizer of the released layout: tensor {key!r} is missing")
    return sd[key]


def _levels(sd: dict, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def infer_bsq_config(sd: dict[str, torch.Tensor], where: str, patchify: bool | None = None) -> BSQVAEConfig:
    """The tokenizer's shape from its tensors. Patchify cannot be seen in the tensors: unless given,
    an f8 tokenizer is taken to be patchified (every released Infinity transformer reads 16 px tokens)."""
    ch = _need(sd, "encoder.conv_in.conv.weight", where).shape[0]
    d = _need(sd, "encoder.conv_out.conv.weight", where).shape[0]
    enc, dec = _levels(sd, r"encoder\.down\.(\d+)\."), _levels(sd, r"decoder\.up\.(\d+)\.")
    if not enc or not dec:
        raise CheckpointError(f"{where} holds no encoder.down.* or decoder.up.* levels: not a BSQ tokenizer")
    mult = tuple(_need(sd, f"encoder.down.{i}.block.0.conv1.conv.weight", where).shape[0] // ch for i in enc)
    dmult = tuple(_need(sd, f"decoder.up.{i}.block.0.conv1.conv.weight", where).shape[0] // ch for i in dec)
    blocks = len(_levels(sd, r"encoder\.down\.0\.block\.(\d+)\."))
    patch = 2 ** len(_levels(sd, r"encoder\.down\.(\d+)\.downsample\."))
    return BSQVAEConfig(codebook_dim=d, ch=ch, ch_mult=mult, dec_ch_mult=dmult, num_res_blocks=blocks,
                        patch_size=patch, patchify=(patch == 8) if patchify is None else patchify)


def build_bsq_vae(sd: dict[str, torch.Tensor], where: str, cfg: BSQVAEConfig | None = None) -> BSQVAE:
    """A BSQVAE holding the tensors of `sd` (canonical names), loaded strictly."""
    cfg = cfg or infer_bsq_config(sd, where)
    sd = dict(sd)
    masks = {key: sd.pop(key) for key in MASK_KEYS if key in sd}
    try:
        with torch.device("meta"):  # shapes only: a misfit is named before anything is allocated
            vae = BSQVAE(cfg)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    with warnings.catch_warnings():  # copying into meta tensors is a no-op torch warns about; it only checks here
        warnings.simplefilter("ignore", UserWarning)
        load_into(vae, sd, where)
    for key, mask in masks.items():
        if tuple(mask.shape) != (cfg.codebook_dim,):
            raise CheckpointError(f"{where}: tensor {key!r} has shape {tuple(mask.shape)} but the tokenizer has "
                                  f"d = {cfg.codebook_dim} bits per cell")
    vae.load_state_dict(sd, assign=True)  # the module takes the file's tensors (no random init, no copy)
    return vae.eval().requires_grad_(False)


def load_bsq_vae(path: str | Path, preset: str | None = None) -> BSQVAE:
    """Load a released BSQ tokenizer (fp32, eval mode, frozen). Its shape is read off the tensors;
    `preset` (a key of PRESETS) fixes it instead, and also fixes patchify."""
    if preset is not None and preset not in PRESETS:
        raise CheckpointError(f"unknown BSQ tokenizer preset {preset!r}; choose one of {sorted(PRESETS)}")
    return build_bsq_vae(read_bsq_state_dict(path), str(path), PRESETS[preset] if preset else None)


def bsq_state_dict(vae: BSQVAE) -> dict[str, torch.Tensor]:
    """The state dict as the official AutoEncoder holds it (with both names of the mask buffer)."""
    sd = {k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}
    d = vae.codebook_dim
    mask = 2 ** torch.arange(d - 1, -1, -1)
    for key in MASK_KEYS:
        sd[key] = mask.clone()
    return sd


def save_bsq_vae(vae: BSQVAE, path: str | Path) -> Path:
    """Write the released layout: `.pth` as {"vae": state_dict}, or a flat `.safetensors`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = bsq_state_dict(vae)
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"vae": sd}, path)
    return path
