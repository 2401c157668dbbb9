"""The nano text-to-image next-scale transformer.

A VAR-style decoder over the flattened token grids of all scales, conditioned on a prompt in two
ways: AdaLN (shift, scale, gate per block) from the pooled text vector, and cross-attention to
the per-character features (so that it can spell several words in different places).
Teacher forcing runs all scales in one pass, block-causal; sampling runs scale by scale with a KV
cache. Both go through `_blocks` with the same per-scale shapes, so they compute the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from varrl.models.text import TextEncoder
from varrl.schedule import ScaleSchedule


@dataclass
class NanoConfig:
    """Shape of the nano transformer."""

    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    text_depth: int = 2
    max_text_len: int = 128
    """longest prompt in characters, BOS included"""

    def __post_init__(self) -> None:
        from varrl.config_checks import at_least, check_ranges, positive
        from varrl.config_types import FieldError

        check_ranges(self, {"dim": at_least(1), "depth": at_least(1), "heads": at_least(1), "mlp_ratio": positive,
                            "text_depth": at_least(1), "max_text_len": at_least(2)})
        if self.dim % self.heads:
            raise FieldError("dim", f"must be a multiple of heads ({self.heads}), got {self.dim}")


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, xs: list[torch.Tensor], cache: dict | None) -> list[torch.Tensor]:
        """xs: consecutive scales [B, n_t, D]; each attends to itself and every scale before it,
        including those already in `cache` (sampling), which then gains the keys/values of xs."""
        B, _, D = xs[0].shape
        qkv = [self.qkv(x).view(B, x.shape[1], 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4) for x in xs]
        ks, vs = [t[1] for t in qkv], [t[2] for t in qkv]
        if cache is not None and "k" in cache:
            ks, vs = [cache["k"], *ks], [cache["v"], *vs]
        k, v = torch.cat(ks, dim=2), torch.cat(vs, dim=2)  # contiguous in both paths
        if cache is not None:
            cache["k"], cache["v"] = k, v
        end = k.shape[2] - sum(x.shape[1] for x in xs)
        out = []
        for x, t in zip(xs, qkv):
            end += x.shape[1]
            o = F.scaled_dot_product_attention(t[0], k[:, :, :end], v[:, :, :end])
            out.append(self.proj(o.transpose(1, 2).reshape(B, x.shape[1], D)))
        return out


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def context(self, text_BSD: torch.Tensor):
        B, S, D = text_BSD.shape
        k, v = self.kv(text_BSD).view(B, S, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x_BLD, kv, text_mask_BS) -> torch.Tensor:
        B, L, D = x_BLD.shape
        q = self.q(x_BLD).view(B, L, self.heads, D // self.heads).transpose(1, 2)
        k, v = kv
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=text_mask_BS[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ada = nn.Linear(dim, 6 * dim)  # shift/scale/gate for attention and MLP
        self.ln1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.ln_x = nn.LayerNorm(dim, eps=1e-6)
        self.xattn = CrossAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, xs: list[torch.Tensor], cond_BD, text_kv, text_mask, cache) -> list[torch.Tensor]:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(cond_BD)).unsqueeze(1).chunk(6, dim=-1)
        att = self.attn([self.ln1(x) * (1 + sc1) + sh1 for x in xs], cache)
        xs = [x + (1 + g1) * a for x, a in zip(xs, att)]
        xs = [x + self.xattn(self.ln_x(x), text_kv, text_mask) for x in xs]
        return [x + (1 + g2) * self.mlp(self.ln2(x) * (1 + sc2) + sh2) for x in xs]


class NanoVAR(nn.Module):
    lora_targets = r"blocks\.\d+\.(attn\.(qkv|proj)|xattn\.(q|kv|proj)|mlp\.[02])"
    """train.lora's default layers: self- and cross-attention and MLP Linears of every block (not AdaLN)"""

    def __init__(self, cfg: NanoConfig, schedule: ScaleSchedule, vocab_size: int, code_dim: int):
        super().__init__()
        self.cfg, self.schedule, self.vocab_size = cfg, schedule, vocab_size
        D = cfg.dim
        self.text = TextEncoder(D, cfg.text_depth, cfg.heads, cfg.max_text_len)
        self.cond = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.start = nn.Linear(D, D)
        self.word_embed = nn.Linear(code_dim, D)
        self.pos = nn.Parameter(torch.randn(1, schedule.total_tokens, D) * 0.02)
        self.lvl = nn.Embedding(schedule.num_steps, D)
        self.blocks = nn.ModuleList([Block(D, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.head_ada = nn.Linear(D, 2 * D)
        self.head_ln = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.head = nn.Linear(D, vocab_size)
        nn.init.zeros_(self.head_ada.weight)
        nn.init.zeros_(self.head_ada.bias)
        lvl_idx = torch.tensor(schedule.step_of_token())
        self.register_buffer("lvl_idx", lvl_idx, persistent=False)

    def encode_text(self, ids_BS: torch.Tensor, mask_BS: torch.Tensor) -> dict:
        """Everything about the prompt that every scale reuses: the context of each block."""
        feats_BSD, pooled_BD = self.text(ids_BS, mask_BS)
        return {"cond": self.cond(pooled_BD), "pooled": pooled_BD, "mask": mask_BS,
                "kv": [blk.xattn.context(feats_BSD) for blk in self.blocks]}

    def _embed(self, ctx: dict, k: int, x_BlC: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings of step k (0-based); step 0 is the text-derived start token."""
        a, b = self.schedule.offsets[k], self.schedule.offsets[k + 1]
        h = self.start(ctx["pooled"]).unsqueeze(1) if k == 0 else self.word_embed(x_BlC)
        return h + self.pos[:, a:b] + self.lvl(self.lvl_idx[a:b])

    def _blocks(self, hs: list[torch.Tensor], ctx, caches) -> list[torch.Tensor]:
        for i, blk in enumerate(self.blocks):
            hs = blk(hs, ctx["cond"], ctx["kv"][i], ctx["mask"], None if caches is None else caches[i])
        sh, sc = self.head_ada(F.silu(ctx["cond"])).unsqueeze(1).chunk(2, dim=-1)
        return [self.head(self.head_ln(h) * (1 + sc) + sh) for h in hs]

    def forward(self, ctx: dict, inputs_BlC: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: inputs for scales 2..m (from the tokenizer; [B, 0, C] for m = 1) ->
        logits [B, L, V] for scales 1..m, L = offsets[m].

        One pass through the layers, but every layer is applied scale by scale: each matmul then
        has exactly the rows (and so the kernel and summation order) of the cached step that
        sampled that scale. One [B*L, D] matmul per layer rounds differently from the [B*n_t, D]
        ones of sampling, which put re-scored log-probs ~1e-4 away from the sampled ones."""
        L = 1 + inputs_BlC.shape[1]
        off = self.schedule.offsets
        if L not in off:
            raise ValueError(f"{L} tokens do not end at a scale boundary ({off})")
        m = off.index(L)
        hs = [self._embed(ctx, k, None if k == 0 else inputs_BlC[:, off[k] - 1: off[k + 1] - 1].contiguous())
              for k in range(m)]
        return torch.cat(self._blocks(hs, ctx, None), dim=1)

    def new_cache(self) -> list[dict]:
        return [{} for _ in self.blocks]

    def step(self, ctx: dict, k: int, x_BlC: torch.Tensor | None, caches: list[dict]) -> torch.Tensor:
        """Sampling: logits [B, h_k*w_k, V] for step k (0-based); appends this scale to the caches."""
        return self._blocks([self._embed(ctx, k, x_BlC)], ctx, caches)[0]


def fork_context(ctx: dict, repeats: int) -> dict:
    """Repeat a prompt context for `repeats` continuations per row (row-major: i*repeats + j)."""
    rep = lambda t: t.repeat_interleave(repeats, dim=0)  # noqa: E731
    return {"cond": rep(ctx["cond"]), "pooled": rep(ctx["pooled"]), "mask": rep(ctx["mask"]),
            "kv": [(rep(k), rep(v)) for k, v in ctx["kv"]]}


def gather_contexts(ctxs: list[dict], rows: list[int]) -> dict:
    """One batch context from single-prompt contexts: row r is ctxs[rows[r]], with the text keys
    padded (and masked out) to the longest prompt."""
    S = max(c["mask"].shape[1] for c in ctxs)

    def pad_keys(t: torch.Tensor) -> torch.Tensor:  # [1, H, S_i, d] -> [1, H, S, d]
        return F.pad(t, (0, 0, 0, S - t.shape[2]))

    def stack(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(ts).index_select(0, index)

    index = torch.tensor(rows, device=ctxs[0]["cond"].device)
    masks = [torch.cat([c["mask"], c["mask"].new_zeros(1, S - c["mask"].shape[1])], 1) for c in ctxs]
    return {"cond": stack([c["cond"] for c in ctxs]), "pooled": stack([c["pooled"] for c in ctxs]),
            "mask": stack(masks),
            "kv": [(stack([pad_keys(c["kv"][i][0]) for c in ctxs]), stack([pad_keys(c["kv"][i][1]) for c in ctxs]))
                   for i in range(len(ctxs[0]["kv"]))]}


def fork_caches(caches: list[dict], repeats: int) -> list[dict]:
    return [{k: v.repeat_interleave(repeats, dim=0) for k, v in c.items()} for c in caches]
