"""The next-scale policy over the nano model: sample, continue prefixes, re-score, decode."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from varrl.models.nano import NanoVAR, fork_caches, fork_context
from varrl.models.text import batch_prompts
from varrl.models.tokenizer import VQTokenizer
from varrl.policy.sampler import SamplerConfig, draw, sampling_logits, token_logprobs
from varrl.policy.trajectory import Trajectory


@dataclass
class _SamplerState:
    """Where sampling stopped: text context, KV caches and the image so far (rows as in the trajectory)."""

    ctx: dict
    caches: list[dict]
    f_hat: torch.Tensor | None
    x_next: torch.Tensor | None
    cfg_rows: bool


class NanoPolicy:
    """Implements the `NextScalePolicy` protocol (varrl.policy.base) for `NanoVAR` + `VQTokenizer`."""

    def __init__(self, model: NanoVAR, tokenizer: VQTokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.tokenizer.requires_grad_(False)
        self.schedule = model.schedule

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_prompts(self, prompts: list[str]) -> None:
        batch_prompts(list(prompts), self.model.cfg.max_text_len)

    def _fork_context(self, ctx: dict, n: int) -> dict:
        return fork_context(ctx, n)

    def _context(self, prompts: list[str], with_uncond: bool) -> dict:
        """Prompt context for the rows; with CFG, the unconditional rows follow the conditional ones."""
        max_len = self.model.cfg.max_text_len
        ids, mask = batch_prompts(prompts, max_len)
        if with_uncond:
            u_ids, u_mask = batch_prompts([""] * len(prompts), max_len, allow_empty=True)
            S = ids.shape[1]
            pad = torch.zeros(len(prompts), S - u_ids.shape[1], dtype=torch.long)
            ids = torch.cat([ids, torch.cat([u_ids, pad], 1)])
            mask = torch.cat([mask, torch.cat([u_mask, pad.bool()], 1)])
        return self.model.encode_text(ids.to(self.device), mask.to(self.device))

    @torch.no_grad()
    def rollout(self, prompts: list[str] | None, n: int, sampler: SamplerConfig,
                generator: torch.Generator | None = None, start: Trajectory | None = None,
                steps: int | None = None) -> Trajectory:
        """Sample n trajectories per prompt, or n continuations per row of `start` (a prefix from
        `traj.cut(m)`), up to `steps` grids in all (default: all of them)."""
        T = self.schedule.num_steps
        steps = T if steps is None else steps
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if start is None:
            if not prompts:
                raise ValueError("rollout needs at least one prompt")
            base_prompts, m, group = list(prompts), 0, torch.arange(len(prompts))
        else:
            if prompts is not None and list(prompts) != start.prompts:
                raise ValueError("with start=..., pass prompts=None or the prefix's own per-row prompts")
            if start.sampler.logprob_mode != sampler.logprob_mode:
                raise ValueError("a continuation must store log-probs in the prefix's logprob_mode")
            base_prompts, m, group = start.prompts, start.num_steps, start.group
        if not m < steps <= T:
            raise ValueError(f"steps must be in {m + 1}..{T}, got {steps}")
        cfg_rows = sampler.uses_uncond
        saved = start.state if start is not None else None
        if isinstance(saved, _SamplerState) and saved.cfg_rows == cfg_rows:
            # The prefix's own sampling state: fork it, nothing of the prefix is recomputed.
            ctx, caches, f_hat, x_next = saved.ctx, saved.caches, saved.f_hat, saved.x_next
            fork = True  # always copy: the continuation appends to its caches
        else:
            ctx = self._context(base_prompts, cfg_rows)
            caches = self.model.new_cache()
            f_hat, x_next = None, None
            # Prefill the prefix scale by scale, with the same calls that sampled it: the cache, and
            # so the continuation, is then exactly what an uninterrupted rollout would have had.
            for k in range(m):
                self.model.step(ctx, k, x_next, caches)
                f_hat, x_next = self._advance(f_hat, k, start.idx[k].to(self.device), cfg_rows)
            fork = n > 1
        B0 = len(base_prompts)
        if fork:
            # repeat_interleave keeps the [cond rows; uncond rows] layout: each half is prompt-major.
            ctx, caches = self._fork_context(ctx, n), fork_caches(caches, n)
            if f_hat is not None:
                f_hat, x_next = f_hat.repeat_interleave(n, 0), x_next.repeat_interleave(n, 0)
        rows = [p for p in base_prompts for _ in range(n)]
        idx_out = [i.repeat_interleave(n, 0) for i in start.idx] if start is not None else []
        lp_out = [lp.repeat_interleave(n, 0) for lp in start.logprobs] if start is not None else []
        B = B0 * n
        for k in range(m, steps):
            logits = self.model.step(ctx, k, x_next, caches).float()
            cond, uncond = (logits[:B], logits[B:]) if cfg_rows else (logits, None)
            g = sampler.guidance(k, T)
            idx = draw(sampling_logits(cond, uncond, g, sampler), generator)
            lp_out.append(token_logprobs(cond, uncond, g, sampler, idx))
            idx_out.append(idx)
            if k + 1 < T:
                f_hat, x_next = self._advance(f_hat, k, idx, cfg_rows)
        parent = torch.arange(B0).repeat_interleave(n) if start is not None else None
        state = _SamplerState(ctx, caches, f_hat, x_next, cfg_rows) if steps < T else None
        return Trajectory(rows, [i.cpu() for i in idx_out], [lp.cpu() for lp in lp_out], sampler,
                          self.schedule, group.repeat_interleave(n), parent, state)

    def _advance(self, f_hat, k: int, idx_Bl: torch.Tensor, cfg_rows: bool):
        f_hat, x_next = self.tokenizer.quantizer.add_scale(f_hat, k, idx_Bl)
        if x_next is not None and cfg_rows:
            x_next = torch.cat([x_next, x_next])  # the unconditional rows see the same image so far
        return f_hat, x_next

    def logprobs(self, traj: Trajectory, steps: list[int] | None = None) -> list[torch.Tensor]:
        """Re-score the stored tokens under the current weights in one teacher-forced pass (the
        batch holds the unconditional rows too when the mode needs them). Differentiable.
        `steps`: 0-based steps to return (default all of the trajectory's)."""
        s = traj.sampler
        need_u = s.rescore_needs_uncond
        idx = [i.to(self.device) for i in traj.idx]
        ctx = self._context(traj.prompts, need_u)
        with torch.no_grad():
            inputs = self._teacher_inputs(idx)
        if need_u:
            inputs = torch.cat([inputs, inputs])
        logits = self.model(ctx, inputs).float()
        B, off, T = traj.batch_size, self.schedule.offsets, self.schedule.num_steps
        out = []
        for k in range(traj.num_steps) if steps is None else steps:
            lg = logits[:, off[k]: off[k + 1]]
            cond, uncond = (lg[:B], lg[B:]) if need_u else (lg, None)
            out.append(token_logprobs(cond, uncond, s.guidance(k, T), s, idx[k]))
        return out

    def _teacher_inputs(self, idx: list[torch.Tensor]) -> torch.Tensor:
        q = self.tokenizer.quantizer
        if len(idx) == 1:
            return idx[0].new_zeros(idx[0].shape[0], 0, q.dim, dtype=torch.float32)
        return q.teacher_inputs(idx)

    @torch.no_grad()
    def decode(self, traj: Trajectory) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1]; a prefix decodes to its coarse preview."""
        q = self.tokenizer.quantizer
        return self.tokenizer.decode_fhat(q.idx_to_fhat([i.to(self.device) for i in traj.idx])).cpu()

    def parameters(self):
        return self.model.parameters()

