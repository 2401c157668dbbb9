"""The class-conditional VAR transformer of the published ImageNet checkpoints.

Sequence layout: the tokens of grids 1..T flattened coarse to fine (grid t holds p_t^2 tokens).
Grid 1's tokens are the class embedding plus a learned start embedding; grid t > 1's input is the
tokenizer's running image estimate f_hat after grids 1..t-1, area-resized to p_t x p_t and
projected by `word_embed`. Every token adds its absolute position and its grid's level embedding.
Attention is block-causal: a token sees its own grid and every coarser one. The condition of
every AdaLN is the class embedding; class `num_classes` (1000) is the unconditional class.

Teacher forcing (`forward`) never drops the label: the published training code replaces it with
the unconditional class at random, which is a training regulariser, not part of the policy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from varrl.models.var.blocks import AdaLNBlock, AdaLNHead
from varrl.schedule import ScaleSchedule

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass
class VarConfig:
    """Shape of a VAR transformer (published presets: `var_preset`)."""

    depth: int = 16
    width: int = 1024
    """embedding width C (the published models use 64 * depth)"""
    heads: int = 16
    """attention heads (the published models use depth heads of 64 channels)"""
    mlp_hidden: int = 4096
    """hidden width of each block's MLP (4 * width)"""
    num_classes: int = 1000
    """class labels 0..num_classes-1; num_classes itself is the unconditional class"""
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    """side of each grid, coarse to fine"""
    shared_aln: bool = False
    """one AdaLN projection shared by all blocks plus per-block offsets (VAR-d36)"""
    attn_l2_norm: bool = True
    """l2-normalised q/k with a learned per-head scale (every published checkpoint)"""
    norm_eps: float = 1e-6
    vocab_size: int = 4096
    code_dim: int = 32
    """channels of the tokenizer's code vectors (Cvae)"""
    patch_px: int = 16
    """image pixels per cell of the finest grid (the tokenizer's downsampling)"""

    def schedule(self) -> ScaleSchedule:
        return ScaleSchedule.square(self.patch_nums, self.patch_nums[-1] * self.patch_px)


def var_preset(name: str) -> VarConfig:
    """`var_d16`, `var_d20`, `var_d24`, `var_d30` (256 px) and `var_d36` (512 px, shared AdaLN)."""
    depths = {"var_d16": 16, "var_d20": 20, "var_d24": 24, "var_d30": 30, "var_d36": 36}
    if name not in depths:
        raise ValueError(f"unknown VAR preset {name!r}; presets: {sorted(depths)}")
    d = depths[name]
    big = d == 36
    return VarConfig(depth=d, width=64 * d, heads=d, mlp_hidden=256 * d, shared_aln=big,
                     patch_nums=PATCH_NUMS_512 if big else PATCH_NUMS_256)


def level_ids(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """[1, L]: the 0-based grid index of every flattened token."""
    return torch.cat([torch.full((p * p,), t) for t, p in enumerate(patch_nums)]).view(1, -1)


def block_causal_bias(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """[1, 1, L, L] additive mask: 0 where query grid >= key grid, -inf elsewhere."""
    lvl = level_ids(patch_nums)[0]
    return torch.where(lvl[:, None] >= lvl[None, :], 0.0, float("-inf")).view(1, 1, lvl.numel(), lvl.numel())


class VAR(nn.Module):
    lora_targets = r"blocks\.\d+\.(attn\.(mat_qkv|proj)|ffn\.fc[12])"
    """train.lora's default layers: the attention and MLP Linears of every block (not AdaLN)"""

    def __init__(self, cfg: VarConfig):
        super().__init__()
        self.cfg = cfg
        C, pn = cfg.width, tuple(cfg.patch_nums)
        self.schedule = cfg.schedule()
        self.vocab_size = cfg.vocab_size
        L, first = self.schedule.total_tokens, pn[0] ** 2
        std = (1 / C / 3) ** 0.5
        self.word_embed = nn.Linear(cfg.code_dim, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.randn(1, first, C) * std)
        self.pos_1LC = nn.Parameter(torch.randn(1, L, C) * std)
        self.lvl_embed = nn.Embedding(len(pn), C)
        if cfg.shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.blocks = nn.ModuleList([AdaLNBlock(C, cfg.heads, cfg.mlp_hidden, cfg.shared_aln, cfg.attn_l2_norm,
                                                cfg.norm_eps) for _ in range(cfg.depth)])
        # Both buffers are part of the published state dicts (and so of a strict load).
        self.register_buffer("lvl_1L", level_ids(pn))
        self.register_buffer("attn_bias_for_masking", block_causal_bias(pn))
        self.head_nm = AdaLNHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)
        nn.init.trunc_normal_(self.class_emb.weight, std=std)
        nn.init.trunc_normal_(self.lvl_embed.weight, std=std)

    # -- conditions -------------------------------------------------------------------------------
    def encode_labels(self, labels_B: torch.Tensor) -> dict:
        """The per-row context every scale reuses: {"cond": class embedding [B, C]}."""
        return {"cond": self.class_emb(labels_B)}

    def _block_cond(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.shared_ada_lin(cond_BD).view(-1, 1, 6, self.cfg.width) if self.cfg.shared_aln else cond_BD

    def _lvl_pos(self, start: int, end: int) -> torch.Tensor:
        return self.lvl_embed(self.lvl_1L[:, start:end]) + self.pos_1LC[:, start:end]

    def _first(self, cond_BD: torch.Tensor) -> torch.Tensor:
        n = self.pos_start.shape[1]
        return cond_BD.unsqueeze(1) + self.pos_start + self._lvl_pos(0, n)

    def _run(self, x_BLC, cond_BD, bias, caches) -> torch.Tensor:
        block_cond = self._block_cond(cond_BD)
        for i, blk in enumerate(self.blocks):
            x_BLC = blk(x_BLC, block_cond, bias, None if caches is None else caches[i])
        return self.head(self.head_nm(x_BLC.float(), cond_BD)).float()

    # -- teacher forcing and sampling -------------------------------------------------------------
    def forward(self, ctx: dict, inputs_BlCv: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tokenizer inputs of grids 2..m ([B, 0, Cvae] for m = 1) -> logits
        [B, offsets[m], V] of grids 1..m."""
        first = self.pos_start.shape[1]
        L = first + inputs_BlCv.shape[1]
        if L not in self.schedule.offsets:
            raise ValueError(f"{L} tokens do not end at a grid boundary ({self.schedule.offsets})")
        x = self._first(ctx["cond"])
        if L > first:
            x = torch.cat((x, self.word_embed(inputs_BlCv.float()) + self._lvl_pos(first, L)), dim=1)
        return self._run(x, ctx["cond"], self.attn_bias_for_masking[:, :, :L, :L], None)

    def new_cache(self) -> list[dict]:
        return [{} for _ in self.blocks]

    def step(self, ctx: dict, k: int, x_BlCv: torch.Tensor | None, caches: list[dict]) -> torch.Tensor:
        """Sampling: logits [B, p_k^2, V] of grid k (0-based); appends this grid's keys/values to caches.
        x_BlCv: the tokenizer input of grid k (None for k = 0)."""
        off = self.schedule.offsets
        if k == 0:
            x = self._first(ctx["cond"])
        else:
            x = self.word_embed(x_BlCv.float()) + self._lvl_pos(off[k], off[k + 1])
        return self._run(x, ctx["cond"], None, caches)


def fork_label_context(ctx: dict, repeats: int) -> dict:
    """Repeat a class context for `repeats` continuations per row (row i*repeats + j)."""
    return {"cond": ctx["cond"].repeat_interleave(repeats, dim=0)}
