"""The next-scale policy over the nano model: sample, continue prefixes, re-score, decode."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from varrl.data.prompt_form import PromptForm
from varrl.models.nano import NanoVAR, fork_caches, fork_context, gather_contexts
from varrl.models.text import batch_prompts, normalize_prompt
from varrl.models.tokenizer import VQTokenizer
from varrl.policy.base import rollout_origin
from varrl.policy.sampler import SamplerConfig, SamplerConfigError, draw, sampling_logits, token_logprobs
from varrl.policy.trajectory import Trajectory


@dataclass
class _SamplerState:
    """Where sampling stopped: per branch (conditional, then unconditional with CFG) the prompt
    context and KV caches, and the image so far (rows as in the trajectory)."""

    ctxs: list[dict]
    caches: list[list[dict]]
    f_hat: torch.Tensor | None
    x_next: torch.Tensor | None


class NanoPolicy:
    """Implements the `NextScalePolicy` protocol (varrl.policy.base) for `NanoVAR` + `VQTokenizer`."""

    def __init__(self, model: NanoVAR, tokenizer: VQTokenizer, prompt_form: PromptForm | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.lora = None  # LoRA adapters on self.model (varrl.policy.lora.attach_lora), if any
        self.tokenizer.requires_grad_(False)
        self.schedule = model.schedule
        self.prompt_form = prompt_form
        """the prompts the model was trained on (from its model directory; None: unknown, no check)"""
        self.form_warned = False

    def note_prompts(self, prompts: list[str]) -> bool:
        """Warn once per policy (one line on stderr) when a prompt falls outside `prompt_form`;
        True when this call warned."""
        if self.prompt_form is None or self.form_warned:
            return False
        odd = next((p for p in prompts if isinstance(p, str) and not self.prompt_form.fits(p)), None)
        if odd is None:
            return False
        self.form_warned = True
        print(f"warning: {self.prompt_form.warning(odd)}", file=sys.stderr)
        return True

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_prompts(self, prompts: list[str]) -> None:
        batch_prompts(list(prompts), self.model.cfg.max_text_len)

    def prompt_text(self, text: str) -> str:
        return normalize_prompt(text)

    def _fork_context(self, ctx: dict, n: int) -> dict:
        return fork_context(ctx, n)

    def _context(self, prompts: list[str], uncond: bool) -> dict:
        """Context of the rows' prompts, or with `uncond` of the unconditional prompt for each row.
        Each distinct prompt is encoded on its own: a row's context then does not depend on which
        other prompts share its batch (batched text matmuls round by batch shape, and sampling
        and re-scoring batch the prompts differently)."""
        texts = [""] * len(prompts) if uncond else list(prompts)
        slot = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        ctxs = []
        for t in slot:
            ids, mask = batch_prompts([t], self.model.cfg.max_text_len, allow_empty=uncond)
            ctxs.append(self.model.encode_text(ids.to(self.device), mask.to(self.device)))
        return gather_contexts(ctxs, [slot[t] for t in texts])

    def _branches(self, prompts: list, with_uncond: bool) -> list[dict]:
        """Contexts of the conditional branch and, with CFG, the unconditional one. Each branch
        runs as its own batch, in sampling and in re-scoring alike: every matmul then sees the
        same rows in both, which is what makes re-scored log-probs equal the sampled ones."""
        return [self._context(prompts, uncond) for uncond in ((False, True) if with_uncond else (False,))]

    @torch.no_grad()
    def rollout(self, prompts: list[str] | None, n: int, sampler: SamplerConfig,
                generator: torch.Generator | None = None, start: Trajectory | None = None,
                steps: int | None = None) -> Trajectory:
        """Sample n trajectories per prompt, or n continuations per row of `start` (a prefix from
        `traj.cut(m)`), up to `steps` grids in all (default: all of them)."""
        T = self.schedule.num_steps
        if sampler.cfg_insertion_layer != 0:
            raise SamplerConfigError("sampler.cfg_insertion_layer is for Infinity models; this model mixes guidance "
                                     "on the logits only (set it to 0)")
        base_prompts, m, group, steps = rollout_origin(prompts, n, sampler, start, steps, T)
        sampler.check_schedule(self.schedule)
        if start is None:
            self.note_prompts(base_prompts)
        n_branches = 2 if sampler.uses_uncond else 1
        saved = start.state if start is not None else None
        if isinstance(saved, _SamplerState) and len(saved.ctxs) == n_branches:
            # The prefix's own sampling state: fork it, nothing of the prefix is recomputed.
            ctxs, caches, f_hat, x_next = saved.ctxs, saved.caches, saved.f_hat, saved.x_next
            fork = True  # always copy: the continuation appends to its caches
        else:
            ctxs = self._branches(base_prompts, n_branches == 2)
            caches = [self.model.new_cache() for _ in ctxs]
            f_hat, x_next = None, None
            # Prefill the prefix scale by scale, with the same calls that sampled it: the cache, and
            # so the continuation, is then exactly what an uninterrupted rollout would have had.
            for k in range(m):
                for ctx, cache in zip(ctxs, caches):
                    self.model.step(ctx, k, x_next, cache)
                f_hat, x_next = self._advance(f_hat, k, start.idx[k].to(self.device))
            fork = n > 1
        B0 = len(base_prompts)
        if fork:
            ctxs = [self._fork_context(ctx, n) for ctx in ctxs]
            caches = [fork_caches(cache, n) for cache in caches]
            if f_hat is not None:
                f_hat, x_next = f_hat.repeat_interleave(n, 0), x_next.repeat_interleave(n, 0)
        rows = [p for p in base_prompts for _ in range(n)]
        idx_out = [i.repeat_interleave(n, 0) for i in start.idx] if start is not None else []
        lp_out = [lp.repeat_interleave(n, 0) for lp in start.logprobs] if start is not None else []
        for k in range(m, steps):
            cond, *rest = [self.model.step(ctx, k, x_next, cache).float() for ctx, cache in zip(ctxs, caches)]
            uncond = rest[0] if rest else None
            g, tau = sampler.guidance(k, T), sampler.temperature_at(k, self.schedule)
            idx = draw(sampling_logits(cond, uncond, g, sampler, tau), generator)
            lp_out.append(token_logprobs(cond, uncond, g, sampler, tau, idx))
            idx_out.append(idx)
            if k + 1 < T:
                f_hat, x_next = self._advance(f_hat, k, idx)
        parent = torch.arange(B0).repeat_interleave(n) if start is not None else None
        state = _SamplerState(ctxs, caches, f_hat, x_next) if steps < T else None
        return Trajectory(rows, [i.cpu() for i in idx_out], [lp.cpu() for lp in lp_out], sampler,
                          self.schedule, group.repeat_interleave(n), parent, state)

    def _advance(self, f_hat, k: int, idx_Bl: torch.Tensor):
        """Add step k's grid to the image so far; both branches see the same image."""
        return self.tokenizer.quantizer.add_scale(f_hat, k, idx_Bl)

    def logprobs(self, traj: Trajectory, steps: list[int] | None = None) -> list[torch.Tensor]:
        """Re-score the stored tokens under the current weights in one teacher-forced pass (two,
        conditional and unconditional, when the mode needs the unconditional branch). Differentiable.
        `steps`: 0-based steps to return (default all of the trajectory's)."""
        s = traj.sampler
        idx = [i.to(self.device) for i in traj.idx]
        with torch.no_grad():
            inputs = self._teacher_inputs(idx)  # shared by both branches
        cond = self.teacher_logits(traj, inputs=inputs)
        uncond = self.teacher_logits(traj, uncond=True, inputs=inputs) if s.rescore_needs_uncond else None
        off, T = self.schedule.offsets, self.schedule.num_steps
        out = []
        # Each step's logits as a contiguous [B, n_t, V] tensor, as sampling had them: softmax over
        # a strided slice takes another multithreaded kernel that rounds differently (~1e-4).
        step = lambda lg, k: None if lg is None else lg[:, off[k]: off[k + 1]].contiguous()  # noqa: E731
        for k in range(traj.num_steps) if steps is None else steps:
            out.append(token_logprobs(step(cond, k), step(uncond, k), s.guidance(k, T), s,
                                      s.temperature_at(k, self.schedule), idx[k]))
        return out

    def teacher_logits(self, traj: Trajectory, uncond: bool = False,
                       inputs: torch.Tensor | None = None) -> torch.Tensor:
        """The raw logits [B, L, V] of every stored step in one teacher-forced pass, of the
        conditional branch (or the unconditional one): what `logprobs` scores. Differentiable.
        `inputs`: the trajectory's teacher inputs when the caller already built them."""
        if inputs is None:
            with torch.no_grad():
                inputs = self._teacher_inputs([i.to(self.device) for i in traj.idx])
        return self.model(self._context(traj.prompts, uncond), inputs).float()

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

