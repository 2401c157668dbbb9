"""Logits processing shared by sampling and re-scoring.

Both paths call `sampling_logits` and `token_logprobs` on the same kind of logits (from the KV
cached step or from the teacher-forced pass), so a stored trajectory re-scores to the log-probs it
was sampled with. Modes for the stored/re-scored log-probs:
  plain     log-softmax of the conditional logits: no guidance, no temperature, no truncation
            (the paper trains on this distribution while rolling out with CFG);
  sampling  log-probs under exactly the distribution that was sampled (guidance, temperature,
            top-k, top-p).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from varrl.config_checks import Range, at_least, check_choice, check_ranges
from varrl.config_types import FieldError


class SamplerConfigError(FieldError):
    """A sampler setting out of range; `key` is the field (sampler.<key> in a run config, --<key> on
    the command line)."""


class NonFiniteError(RuntimeError):
    """The policy produced NaN/inf (logits, loss or weights): training diverged."""


@dataclass
class SamplerConfig:
    """How tokens are drawn, and which log-probs are stored with a trajectory."""

    cfg: float = 3.0
    """classifier-free guidance strength (0: off); logits = (1+g)*cond - g*uncond"""
    cfg_schedule: Literal["linear", "constant"] = "linear"
    """linear: g ramps from 0 at the first step to cfg at the last (VAR); constant: g = cfg"""
    top_k: int = 0
    """keep the k most likely tokens (0: off)"""
    top_p: float = 0.0
    """keep the smallest set of tokens with this total probability (0 or 1: off)"""
    temperature: float = 1.0
    tail_temperature: float | None = None
    """temperature of the grids after `tail_after` (null: `temperature` on every grid); a cold tail
    makes the fine grids near-deterministic given the coarse ones, so the reward is decided by few tokens"""
    tail_after: int | str | None = None
    """the last grid sampled at `temperature` (a step count, `64px` or `8x8`); later grids take
    `tail_temperature`"""
    logprob_mode: Literal["plain", "sampling"] = "plain"
    cfg_insertion_layer: int = 0
    """where guidance mixes the two branches: 0 on the logits (every model); k < 0 (Infinity
    only) on the hidden states after block depth+k, the conditional branch continuing with them"""

    def __post_init__(self) -> None:
        try:
            check_ranges(self, {"cfg": at_least(0, "(0: no guidance)"), "top_k": at_least(0, "(0: off)"),
                                "top_p": Range(0, 1, note="(0 or 1: off)"),
                                "temperature": Range(0, lo_open=True),
                                "tail_temperature": Range(0, lo_open=True),
                                "cfg_insertion_layer": Range(hi=0, note="(0: guidance on the logits; k < 0: on the "
                                                                        "hidden states after block depth+k)")})
            if (self.tail_temperature is None) != (self.tail_after is None):
                given, missing = (("tail_temperature", "tail_after") if self.tail_after is None
                                  else ("tail_after", "tail_temperature"))
                raise FieldError(missing, f"is needed when {given} is set: set both (e.g. tail_after=8x8 "
                                          f"tail_temperature=0.05) or neither")
            check_choice(self, "cfg_schedule", ("linear", "constant"))
            check_choice(self, "logprob_mode", ("plain", "sampling"))
        except FieldError as err:
            raise SamplerConfigError(err.key, err.problem) from None

    def guidance(self, step: int, num_steps: int) -> float:
        """Guidance strength at 0-based step `step` of `num_steps`."""
        if self.cfg_schedule == "constant" or num_steps == 1:
            return self.cfg
        return self.cfg * step / (num_steps - 1)

    def check_schedule(self, schedule) -> None:
        """A `tail_after` that names no step of `schedule` is an error naming the key."""
        if self.tail_after is not None:
            try:
                schedule.resolve_step(self.tail_after)
            except ValueError as e:
                raise SamplerConfigError("tail_after", f"is {self.tail_after!r}: {e}") from None

    def temperature_at(self, step: int, schedule) -> float:
        """Temperature of 0-based step `step` of `schedule` (whose `resolve_step` reads `tail_after`)."""
        if self.tail_temperature is None:
            return self.temperature
        return self.tail_temperature if step >= schedule.resolve_step(self.tail_after) else self.temperature

    @property
    def uses_uncond(self) -> bool:
        """Whether sampling needs the unconditional branch at all."""
        return self.cfg > 0

    @property
    def rescore_needs_uncond(self) -> bool:
        return self.uses_uncond and self.logprob_mode == "sampling"


def truncate_logits(logits_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set the logits of tokens outside the top-k / top-p set to -inf (at least one token stays)."""
    V = logits_BlV.shape[-1]
    use_p = 0.0 < top_p < 1.0
    if 0 < top_k < V:
        vals_Blk, order_Blk = logits_BlV.topk(top_k, dim=-1)
        keep_BlV = logits_BlV >= vals_Blk[..., -1:]  # ties at the k-th value stay in
        if use_p and int(keep_BlV.sum(-1).max()) == top_k:
            # No ties: the top-k set is `order`, already sorted, so top-p needs only its k values.
            # (The general path's sort over the whole vocabulary costs 6x the rest of truncation.)
            probs_Blk = vals_Blk.softmax(dim=-1)
            keep_Blk = (probs_Blk.cumsum(dim=-1) - probs_Blk) < top_p
            keep_BlV = torch.zeros_like(keep_BlV).scatter(-1, order_Blk, keep_Blk)
            return logits_BlV.masked_fill(~keep_BlV, float("-inf"))
        logits_BlV = logits_BlV.masked_fill(~keep_BlV, float("-inf"))
    if use_p:
        sorted_l, order = logits_BlV.sort(dim=-1, descending=True)
        probs = sorted_l.softmax(dim=-1)
        # A token is dropped when the tokens ranked above it already reach top_p.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits_BlV = logits_BlV.masked_fill(drop, float("-inf"))
    return logits_BlV


def _guided_logits(cond_BlV: torch.Tensor, uncond_BlV: torch.Tensor | None, g: float,
                   tau: float) -> torch.Tensor:
    logits = cond_BlV if uncond_BlV is None or g == 0 else (1 + g) * cond_BlV - g * uncond_BlV
    return logits / tau if tau != 1.0 else logits


def sampling_logits(cond_BlV: torch.Tensor, uncond_BlV: torch.Tensor | None, g: float,
                    s: SamplerConfig, tau: float) -> torch.Tensor:
    """The logits of the distribution that sampling draws from at a step with guidance g and
    temperature tau (`s.temperature_at(step, schedule)`)."""
    return truncate_logits(_guided_logits(cond_BlV, uncond_BlV, g, tau), s.top_k, s.top_p)


def rescoring_logits(raw_BlV: torch.Tensor, s: SamplerConfig, idx_Bl: torch.Tensor) -> torch.Tensor:
    """The sampling distribution's logits (`raw` already guided and tempered) for re-scoring the
    drawn tokens idx: truncated as sampling truncates, with each drawn token kept in its set."""
    logits = truncate_logits(raw_BlV, s.top_k, s.top_p)
    if s.top_k or 0.0 < s.top_p < 1.0:
        # Re-scoring runs other batch shapes than sampling, so logits differ in the last bits
        # and a token drawn at the edge of the top-k/top-p set can fall just outside it: a
        # log-prob of -inf would poison the loss. The drawn token always stays in the set.
        at = idx_Bl.unsqueeze(-1)
        logits = logits.scatter(-1, at, raw_BlV.gather(-1, at))
    return logits


def token_logprobs(cond_BlV: torch.Tensor, uncond_BlV: torch.Tensor | None, g: float,
                   s: SamplerConfig, tau: float, idx_Bl: torch.Tensor) -> torch.Tensor:
    """Log-probs [B, l] of the tokens idx under the distribution named by s.logprob_mode (at a
    step with guidance g and temperature tau)."""
    if s.logprob_mode == "plain":
        logits = cond_BlV
    else:
        logits = rescoring_logits(_guided_logits(cond_BlV, uncond_BlV, g, tau), s, idx_Bl)
    return logits.log_softmax(dim=-1).gather(-1, idx_Bl.unsqueeze(-1)).squeeze(-1)


def draw(logits_BlV: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Sample one token per position from softmax(logits) -> idx [B, l]."""
    B, l, V = logits_BlV.shape
    probs = logits_BlV.float().softmax(dim=-1).view(B * l, V)
    if not torch.isfinite(probs).all():
        raise NonFiniteError("the policy produced non-finite logits while sampling")
    if generator is not None and generator.device != probs.device:
        # A CPU generator drives GPU sampling too: the draws then follow the seed on any device.
        return torch.multinomial(probs.cpu(), 1, generator=generator).view(B, l).to(logits_BlV.device)
    return torch.multinomial(probs, 1, generator=generator).view(B, l)
