"""Bitwise sampling math of Infinity, shared by sampling and re-scoring (pure functions).

A token is d bits; the head gives 2d logits per token, bit j using channels (2j, 2j+1), class 1
meaning bit 1. `bit_view` turns [B, l, 2d] into [B, l, d, 2]; everything below works per bit.

How varrl's SamplerConfig maps onto the official sampler (`autoregressive_infer_cfg` with the
arguments of tools/run_infinity.py):
  cfg, cfg_schedule   Infinity's per-scale cfg list is 1 + g_t with g_t = SamplerConfig.guidance(t, T):
                      `cfg=2, cfg_schedule=constant` is the official `--cfg 3` (the default);
                      `linear` ramps it from 1 at the first scale to 1 + cfg at the last.
  cfg_insertion_layer 0 (default, the command-line tool): per bit, logits_t = cfg_t * cond / tau +
                      (1 - cfg_t) * uncond / tau. k < 0 (the sampler function's own default, -5):
                      hidden states after block depth+k become cfg_t * cond + (1 - cfg_t) * uncond
                      and the conditional branch continues with them (later scales attend to the
                      mixed states); logits = head(mixed path) / tau.
  temperature         tau (one value for every scale), applied to each branch before the mixing.
  top_k               over the 2 values of a bit: 1 keeps the larger (greedy bit), 0 or >= 2 keep
                      both (the tool's 900 has no effect).
  top_p               drops a bit's smaller value when its probability is <= 1 - top_p (0.97 drops
                      values below 3%); the larger value always stays (at a tie, value 1 stays).
  unconditional text  the first `len` rows of `cfg_uncond`, len = the prompt's own T5 token count.
Each scale draws one `torch.multinomial` (with replacement) over the B*l*d rows of 2 probabilities.
"""

from __future__ import annotations

import torch

from varrl.policy.sampler import NonFiniteError


def bit_view(logits_BlV: torch.Tensor) -> torch.Tensor:
    """[B, l, 2d] -> [B, l, d, 2]."""
    return logits_BlV.unflatten(-1, (-1, 2))


def guided_bit_logits(cond: torch.Tensor, uncond: torch.Tensor | None, cfg: float, tau: float) -> torch.Tensor:
    """Logits-space guidance as the release computes it: each branch times 1/tau, then
    cfg * cond + (1 - cfg) * uncond (no mixing when cfg == 1 or there is no unconditional branch)."""
    c = cond.mul(1 / tau)
    if uncond is None or cfg == 1:
        return c
    return cfg * c + (1 - cfg) * uncond.mul(1 / tau)


def mix_hidden(cond_BLC: torch.Tensor, uncond_BLC: torch.Tensor, cfg: float) -> torch.Tensor:
    """Hidden-state guidance: cfg * cond + (1 - cfg) * uncond (cond itself when cfg == 1)."""
    return cond_BLC if cfg == 1 else cfg * cond_BLC + (1 - cfg) * uncond_BLC


def truncate_bits(logits_Bld2: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Official top-k / top-p over the 2 values of each bit; a removed value gets -inf."""
    if top_k == 1:
        logits_Bld2 = logits_Bld2.masked_fill(logits_Bld2 < logits_Bld2.amax(-1, keepdim=True), float("-inf"))
    if top_p > 0:
        probs = logits_Bld2.softmax(-1)
        # The smaller value of a bit goes when its probability is <= 1 - top_p; at a tie value 0 goes.
        low_is_one = probs[..., 1] < probs[..., 0]
        drop_low = probs.amin(-1) <= (1 - top_p)
        drop = torch.stack((drop_low & ~low_is_one, drop_low & low_is_one), dim=-1)
        logits_Bld2 = logits_Bld2.masked_fill(drop, float("-inf"))
    return logits_Bld2


def draw_bits(logits_Bld2: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per bit from softmax(logits) -> bits [B, l, d] (one multinomial over all bits)."""
    B, l, d, _ = logits_Bld2.shape
    probs = logits_Bld2.float().softmax(-1).reshape(B * l * d, 2)
    if not torch.isfinite(probs).all():
        raise NonFiniteError("the policy produced non-finite logits while sampling")
    if generator is not None and generator.device != probs.device:
        # A CPU generator drives GPU sampling too: the draws then follow the seed on any device.
        out = torch.multinomial(probs.cpu(), 1, replacement=True, generator=generator).to(probs.device)
    else:
        out = torch.multinomial(probs, 1, replacement=True, generator=generator)
    return out.view(B, l, d)


def token_logprobs(logits_Bld2: torch.Tensor, bits_Bld: torch.Tensor) -> torch.Tensor:
    """Log-prob of each token [B, l]: the sum over its bits of log softmax(bit logits)[bit]."""
    lp = logits_Bld2.float().log_softmax(-1).gather(-1, bits_Bld.unsqueeze(-1)).squeeze(-1)
    return lp.sum(-1)


def keep_drawn(truncated_Bld2: torch.Tensor, raw_Bld2: torch.Tensor, bits_Bld: torch.Tensor) -> torch.Tensor:
    """The drawn value of every bit stays in the truncated set: re-scoring runs other batch shapes
    than sampling, so a value at the edge of top-p can fall just outside it (a -inf log-prob)."""
    at = bits_Bld.unsqueeze(-1)
    return truncated_Bld2.scatter(-1, at, raw_Bld2.gather(-1, at))


def pack_bits(bits_Bld: torch.Tensor) -> torch.Tensor:
    """Bits [B, l, d] (d <= 63) -> one int64 per token, bit 0 the most significant."""
    d = bits_Bld.shape[-1]
    weights = 2 ** torch.arange(d - 1, -1, -1, device=bits_Bld.device, dtype=torch.long)
    return (bits_Bld.long() * weights).sum(-1)


def unpack_bits(idx_Bl: torch.Tensor, d: int) -> torch.Tensor:
    """int64 per token -> bits [B, l, d] (inverse of pack_bits)."""
    shifts = torch.arange(d - 1, -1, -1, device=idx_Bl.device, dtype=torch.long)
    return (idx_Bl.unsqueeze(-1) >> shifts) & 1
