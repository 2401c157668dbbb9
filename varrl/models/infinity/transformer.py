"""The Infinity text-to-image transformer (FoundationVision Infinity), written for varrl.

Sequence layout: the tokens of grids 1..T flattened coarse to fine, row-major within a grid.
Grid 1 (always 1x1) is the start token: the pooled text vector plus a learned `pos_start`. Grid
t > 1's input is the tokenizer's running sum of codes after grids 1..t-1 resized to grid t
(`d` channels per token; the policy builds it), projected by `word_embed`. Every token adds the
embedding of its grid index (`lvl_embed`) once, before the first block; positions enter only
through the 2-D RoPE of the self-attention. Attention is block-causal: a token sees its own grid
and every coarser one. The head predicts each of a token's d bits as a 2-way categorical: logits
[B, L, 2d], bit j of a token using channels (2j, 2j+1), class 1 = bit 1.

Text: T5 features [B, T, Ct5] with a mask of the real tokens -> RMSNorm -> (a) attention pooling
to one vector per row (start token, AdaLN condition via the shared AdaLN projection, head norm);
(b) an MLP to the width, the keys/values of every block's cross-attention. The unconditional text
is the first `len` rows of the learned `cfg_uncond`, `len` being the prompt's own token count.

Teacher forcing never drops the text: the official `forward` replaces prompts with `cfg_uncond`
at random (a training regulariser, even in eval mode), which is not part of the policy.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from varrl.models.infinity.blocks import (
    AdaLNBeforeHead,
    BlockChunk,
    CrossAttnBlock,
    KVCache,
    RMSNorm,
    TextPool,
    rope_angles,
)

LEVELS = 15  # rows of lvl_embed in the released files (grids per schedule: at most 13)


@dataclass
class InfinityConfig:
    """Shape of an Infinity transformer (released presets: `infinity_preset`)."""

    depth: int = 32
    width: int = 2048
    heads: int = 16
    mlp_hidden: int = 8192
    """hidden width of each block's MLP: round(4 * width / 256) * 256"""
    bits: int = 32
    """bits per token d (the tokenizer's codebook_dim, x4 with the 8B's 2x2 spatial patchify)"""
    text_dim: int = 2048
    """channels of the T5 features (Flan-T5-XL: 2048)"""
    text_maxlen: int = 512
    """rows of cfg_uncond: the longest prompt in T5 tokens"""
    pool_heads: int = 16
    """heads of the text attention pooling (text_dim // 128 in the releases)"""
    block_chunks: int = 8
    """blocks are stored in this many chunks (the released key layout block_chunks.<c>.module.<j>;
    1: blocks.<i>)"""
    norm_eps: float = 1e-6


def infinity_preset(name: str) -> InfinityConfig:
    """`infinity_125m` (256 px), `infinity_2b` (1024 px, d = 32) and `infinity_8b` (1024/512 px,
    d = 56: 14 bits x 2x2 patchify), as the official tools build them."""
    presets = {
        "infinity_125m": InfinityConfig(depth=12, width=768, heads=8, mlp_hidden=3072, bits=32, block_chunks=4),
        "infinity_2b": InfinityConfig(depth=32, width=2048, heads=16, mlp_hidden=8192, bits=32, block_chunks=8),
        "infinity_8b": InfinityConfig(depth=40, width=3584, heads=28, mlp_hidden=14336, bits=56, block_chunks=8),
    }
    if name not in presets:
        raise ValueError(f"unknown Infinity preset {name!r}; presets: {sorted(presets)}")
    return presets[name]


def level_ids(grids) -> torch.Tensor:
    """[L]: the 0-based grid index of every flattened token."""
    return torch.cat([torch.full((h * w,), t, dtype=torch.long) for t, (h, w) in enumerate(grids)])


def block_causal_mask(grids) -> torch.Tensor:
    """[L, L] bool: True where the query's grid index >= the key's."""
    lvl = level_ids(grids)
    return lvl[:, None] >= lvl[None, :]


class Infinity(nn.Module):
    lora_targets = (r"(blocks\.\d+|block_chunks\.\d+\.module\.\d+)"
                    r"\.(sa\.(mat_qkv|proj)|ca\.(mat_q|mat_kv|proj)|ffn\.fc[12])")
    """train.lora's default layers: self- and cross-attention and MLP Linears of every block (not AdaLN)"""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.cfg = cfg
        C, D = cfg.width, cfg.width
        if cfg.depth % cfg.block_chunks:
            raise ValueError(f"depth {cfg.depth} is not divisible into {cfg.block_chunks} block chunks")
        std = (1 / C / 3) ** 0.5
        self.cfg_uncond = nn.Parameter(torch.randn(cfg.text_maxlen, cfg.text_dim) * 1.2 / cfg.text_dim**0.5)
        self.text_norm = RMSNorm(cfg.text_dim, cfg.norm_eps)
        self.text_proj_for_sos = TextPool(cfg.text_dim, D, cfg.pool_heads)
        self.text_proj_for_ca = nn.Sequential(nn.Linear(cfg.text_dim, D), nn.GELU(approximate="tanh"), nn.Linear(D, D))
        self.pos_start = nn.Parameter(torch.randn(1, 1, C) * std)
        self.lvl_embed = nn.Embedding(LEVELS, C)
        nn.init.trunc_normal_(self.lvl_embed.weight, std=std)
        self.word_embed = nn.Linear(cfg.bits, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * C))
        blocks = [CrossAttnBlock(C, cfg.heads, cfg.mlp_hidden, cfg.norm_eps) for _ in range(cfg.depth)]
        if cfg.block_chunks == 1:
            self.blocks = nn.ModuleList(blocks)
        else:
            n = cfg.depth // cfg.block_chunks
            self.block_chunks = nn.ModuleList([BlockChunk(blocks[i: i + n]) for i in range(0, cfg.depth, n)])
        self.head_nm = AdaLNBeforeHead(C, D, cfg.norm_eps)
        self.head = nn.Linear(C, 2 * cfg.bits)
        self.grad_checkpointing = False
        """recompute each block in the backward pass instead of keeping its activations"""
        self._layout: dict = {}

    fsdp_forward_methods = ("encode_texts", "embed", "logits")
    """the methods besides `forward` through which the policy reads the root's own weights (FSDP
    gathers them around each call; the blocks are sharded units of their own)"""

    def fsdp_units(self) -> list[CrossAttnBlock]:
        """The modules FSDP shards one by one (then the root holds the rest)."""
        return self.block_list

    def store_matmuls_in_(self, dtype: torch.dtype) -> None:
        """Keep the weights of every Linear that runs under autocast in `dtype` (for a frozen copy
        under `dtype` autocast: autocast rounds fp32 weights to the same values before each
        matmul, so the outputs are unchanged and those weights take half the memory). The head
        and its norm run with autocast off and stay fp32, as do norms, biases added outside a
        Linear, embeddings and the learned offsets."""
        fp32 = {id(m) for m in (*self.head_nm.modules(), self.head)}
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in fp32:
                m.to(dtype)

    @property
    def block_list(self) -> list[CrossAttnBlock]:
        if self.cfg.block_chunks == 1:
            return list(self.blocks)
        return [b for chunk in self.block_chunks for b in chunk.module]

    # -- text -------------------------------------------------------------------------------------
    def uncond_text(self, lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional text of rows whose prompts have `lens` tokens: cfg_uncond[:len] each,
        padded to [B, max len] with its mask."""
        T = max(lens)
        if T > self.cfg.text_maxlen:
            raise ValueError(f"a prompt of {T} tokens exceeds the model's {self.cfg.text_maxlen}")
        feats = self.cfg_uncond[:T].unsqueeze(0).expand(len(lens), -1, -1)
        mask = torch.arange(T, device=feats.device)[None, :] < torch.tensor(lens, device=feats.device)[:, None]
        return feats * mask[..., None], mask

    def encode_text(self, feats_BTC: torch.Tensor, mask_BT: torch.Tensor) -> dict:
        """The per-row context every scale reuses: the pooled condition [B, D], the shared AdaLN
        vectors [B, 1, 6, C], the cross-attention text [B, T, D] and its mask [B, T]."""
        t = self.text_norm(feats_BTC.float())
        cond = self.text_proj_for_sos(t, mask_BT).float()
        # A copy, not a view: FSDP hooks a sharded module's outputs and warns on views of them.
        gss = self.shared_ada_lin(cond).float().view(-1, 1, 6, self.cfg.width).clone()
        return {"cond": cond, "gss": gss, "text": self.text_proj_for_ca(t), "mask": mask_BT}

    def encode_texts(self, texts: list[torch.Tensor | int]) -> list[dict]:
        """`encode_text` of each text on its own: T5 features [1, T, Ct5], or an int `len` for the
        unconditional text of a prompt of that many tokens. One call for any number of texts, so
        that under FSDP every rank makes the same calls (and gathers) whatever its prompts."""
        out = []
        for t in texts:
            if isinstance(t, int):
                feats, mask = self.uncond_text([t])
            else:
                feats, mask = t, torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
            out.append(self.encode_text(feats, mask))
        return out

    # -- sequence pieces --------------------------------------------------------------------------
    def layout(self, grids, rope_hw: tuple[int, int], device) -> dict:
        """Level ids, block-causal mask and RoPE cos/sin of a schedule (cached per schedule)."""
        key = (tuple(map(tuple, grids)), tuple(rope_hw), str(device))
        if key not in self._layout:
            ang = rope_angles(self.cfg.width // self.cfg.heads, grids, rope_hw)
            offs = [0]
            for h, w in grids:
                offs.append(offs[-1] + h * w)
            self._layout[key] = {"lvl": level_ids(grids).to(device), "mask": block_causal_mask(grids).to(device),
                                 "cos": ang.cos().to(device), "sin": ang.sin().to(device), "offsets": offs}
        return self._layout[key]

    def embed(self, ctx: dict, inputs_BLd: torch.Tensor | None, lay: dict, lo: int, hi: int) -> torch.Tensor:
        """Token inputs of steps lo..hi-1 (0-based): the start token when lo == 0, then
        word_embed(inputs) of the later steps; plus each token's grid embedding."""
        parts = []
        if lo == 0:
            parts.append(ctx["cond"].unsqueeze(1) + self.pos_start)
        if inputs_BLd is not None and inputs_BLd.shape[1] > 0:
            parts.append(self.word_embed(inputs_BLd.float()))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        a, b = lay["offsets"][lo], lay["offsets"][hi]
        if x.shape[1] != b - a:
            raise ValueError(f"steps {lo + 1}..{hi} hold {b - a} tokens but {x.shape[1]} inputs were given")
        return x + self.lvl_embed(lay["lvl"][a:b])

    def run_blocks(self, x_BLC: torch.Tensor, ctx: dict, lay: dict, lo: int, hi: int, first: int, stop: int,
                   caches: list[KVCache] | None) -> torch.Tensor:
        """Blocks first..stop-1 on the tokens of steps lo..hi-1. Without caches the pass starts at
        step 0 and masks block-causally; with caches the tokens attend to the cached earlier steps
        and append their own keys/values (sampling, and the policy's scale-by-scale teacher forcing)."""
        a, b = lay["offsets"][lo], lay["offsets"][hi]
        rope = (lay["cos"][a:b], lay["sin"][a:b])
        mask = None if caches is not None else lay["mask"][:b, :b]
        blocks = self.block_list
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for i in range(first, stop):
            cache = None if caches is None else caches[i]
            if ckpt and cache is None:
                x_BLC = checkpoint(blocks[i], x_BLC, ctx["gss"], ctx["text"], ctx["mask"], rope, mask, None,
                                   use_reentrant=False)
            elif ckpt:
                # The recomputation must not append to the cache again: the block runs on a copy of
                # the cache's past keys/values and hands back the extended ones.
                x_BLC, cache["k"], cache["v"] = checkpoint(_block_with_past, blocks[i], x_BLC, ctx["gss"], ctx["text"],
                                                           ctx["mask"], rope, cache.get("k"), cache.get("v"),
                                                           use_reentrant=False)
            else:
                x_BLC = blocks[i](x_BLC, ctx["gss"], ctx["text"], ctx["mask"], rope, mask, cache)
        return x_BLC

    def logits(self, x_BLC: torch.Tensor, ctx: dict) -> torch.Tensor:
        """Bit logits [B, L, 2d], in fp32 whatever the autocast (as the release computes them)."""
        dev = x_BLC.device.type
        with torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext():
            return self.head(self.head_nm(x_BLC.float(), ctx["cond"].float())).float()

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in range(self.cfg.depth)]

    # -- teacher forcing ----------------------------------------------------------------------------
    def forward(self, ctx: dict, inputs_BLd: torch.Tensor, grids, rope_hw: tuple[int, int]) -> torch.Tensor:
        """Teacher forcing: inputs of grids 2..m ([B, 0, d] for m = 1) -> bit logits [B, L_m, 2d]
        of grids 1..m."""
        lay = self.layout(grids, rope_hw, inputs_BLd.device)
        m = lay["offsets"].index(1 + inputs_BLd.shape[1]) if 1 + inputs_BLd.shape[1] in lay["offsets"] else -1
        if m < 1:
            raise ValueError(f"{1 + inputs_BLd.shape[1]} tokens do not end at a grid boundary ({lay['offsets']})")
        x = self.embed(ctx, inputs_BLd, lay, 0, m)
        return self.logits(self.run_blocks(x, ctx, lay, 0, m, 0, self.cfg.depth, None), ctx)


def _block_with_past(block, x_BLC, gss, text, text_mask, rope, past_k, past_v):
    cache = KVCache() if past_k is None else KVCache({"k": past_k, "v": past_v})
    y = block(x_BLC, gss, text, text_mask, rope, None, cache)
    return y, cache["k"], cache["v"]


def gather_context(ctxs: list[dict], rows: list[int]) -> dict:
    """Stack per-prompt contexts (each of batch 1) into rows, padding the text to the longest."""
    T = max(c["text"].shape[1] for c in ctxs)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, 0, 0, T - t.shape[1])) if t.shape[1] < T else t

    text = torch.cat([pad(c["text"]) for c in ctxs])
    mask = torch.cat([torch.nn.functional.pad(c["mask"], (0, T - c["mask"].shape[1])) for c in ctxs])
    idx = torch.tensor(rows, device=text.device)
    return {"cond": torch.cat([c["cond"] for c in ctxs])[idx], "gss": torch.cat([c["gss"] for c in ctxs])[idx],
            "text": text[idx], "mask": mask[idx]}


def fork_context(ctx: dict, n: int) -> dict:
    """Repeat each row n times (row i*n + j)."""
    return {k: v.repeat_interleave(n, dim=0) for k, v in ctx.items()}


def fork_caches(caches: list[KVCache], n: int) -> list[KVCache]:
    return [KVCache({k: v.repeat_interleave(n, dim=0) for k, v in c.items()}) for c in caches]
