"""The next-scale policy over an Infinity transformer, its BSQ tokenizer and the T5 text encoder.

Trajectories store each token's d bits packed into one int64 (bit 0 most significant: see
`pack_bits`), so cut/select/cat work as for every other model; `policy.bits(traj)` unpacks them.
A token's log-prob is the sum of its bits' log-probs. Sampling and re-scoring go through the same
bit math (varrl.policy.infinity_sampler, whose docstring maps SamplerConfig onto the official
sampler's arguments), and each CFG branch runs as its own batch in both, so re-scored log-probs
equal the sampled ones and the importance ratio is exactly 1 on-policy.

Log-prob modes: `plain` scores the conditional model alone (no guidance, temperature or
truncation); `sampling` scores exactly the distribution that was drawn from, including hidden-
state guidance (cfg_insertion_layer < 0), for which re-scoring runs both branches up to the
mixing block, mixes per scale, and continues the conditional branch.
"""

from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch

from varrl.models.infinity.transformer import Infinity, fork_caches, fork_context, gather_context
from varrl.policy.base import rollout_origin
from varrl.policy.infinity_sampler import (
    bit_view,
    draw_bits,
    guided_bit_logits,
    keep_drawn,
    mix_hidden,
    pack_bits,
    token_logprobs,
    truncate_bits,
    unpack_bits,
)
from varrl.policy.sampler import SamplerConfig, SamplerConfigError
from varrl.policy.trajectory import Trajectory
from varrl.schedule import ScaleSchedule

TEXT_CACHE = 4096  # prompts whose T5 features are kept (the encoder is frozen)


def official_sampler(**kw) -> SamplerConfig:
    """The official command-line sampler: cfg 3 at every scale on the logits, tau 1, top-p 0.97."""
    return SamplerConfig(**{"cfg": 2.0, "cfg_schedule": "constant", "top_p": 0.97, **kw})


@dataclass
class _SamplerState:
    """Where sampling stopped: contexts and KV caches per branch ("cond", "uncond", and "pure":
    the unmixed conditional path after the mixing block, kept for plain log-probs under hidden
    guidance), the bits so far and the next step's input."""

    ctxs: dict
    caches: dict
    bits: list
    x_next: torch.Tensor | None


class InfinityPolicy:
    """Implements the `NextScalePolicy` protocol (varrl.policy.base) for Infinity + BSQ-VAE + T5."""

    def __init__(self, model: Infinity, vae, text_tokenizer, text_encoder, schedule: ScaleSchedule,
                 rope_hw: tuple[int, int], compute_dtype: torch.dtype | None = None, sources: dict | None = None):
        self.model, self.vae = model, vae
        self.text_tokenizer, self.text_encoder = text_tokenizer, text_encoder
        self.schedule, self.rope_hw = schedule, tuple(rope_hw)
        self.compute_dtype = compute_dtype
        """bf16: the transformer runs under autocast (weights stay fp32); None: fp32 throughout"""
        self.sources = dict(sources or {})  # where the parts were loaded from (written with saved policies)
        self.vae.requires_grad_(False)
        if text_encoder is not None:
            text_encoder.requires_grad_(False)
        self._text: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __deepcopy__(self, memo):
        # The frozen reference needs its own transformer only: the tokenizer, the text encoder and
        # the cached text features are shared (they never change), which saves their memory.
        new = copy.copy(self)
        new.model = copy.deepcopy(self.model, memo)
        return new

    def frozen_reference(self) -> InfinityPolicy:
        """A frozen copy of this policy for the KL term. Under bf16 autocast its matmul weights are
        stored in bf16 (the values autocast computes with anyway: its log-probs equal this
        policy's bit for bit until the first update), which halves the reference's memory."""
        ref = copy.deepcopy(self)
        ref.model.requires_grad_(False)
        if self.compute_dtype is not None:
            ref.model.store_matmuls_in_(self.compute_dtype)
        return ref

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def bits_per_token(self) -> int:
        return self.model.cfg.bits

    def parameters(self):
        return self.model.parameters()

    def _amp(self):
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    # -- text ---------------------------------------------------------------------------------------
    def check_prompts(self, prompts: list[str]) -> None:
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompt {p!r} is not a non-empty text: Infinity is a text-to-image model")

    def prompt_text(self, text: str) -> str:
        return text  # T5 reads the prompt as written (its tokenizer does its own normalisation)

    def text_features(self, prompt: str) -> torch.Tensor:
        """T5 features [1, T, Ct5] of one prompt (cached: the encoder is frozen)."""
        feats = self._text.get(prompt)
        if feats is None:
            from varrl.models.infinity.text import encode_prompts

            with torch.no_grad():
                packed, lens, _ = encode_prompts(self.text_tokenizer, self.text_encoder, [prompt],
                                                 max_len=self.model.cfg.text_maxlen)
            feats = packed[: int(lens[0])].float().unsqueeze(0).to(self.device)
            self._text[prompt] = feats
            if len(self._text) > TEXT_CACHE:
                self._text.popitem(last=False)
        else:
            self._text.move_to_end(prompt)
        return feats

    def _context(self, prompts: list[str], uncond: bool) -> dict:
        """Context of the rows' prompts, or with `uncond` of cfg_uncond[:len] of each row's prompt.
        Each distinct text is encoded as its own batch, so a row's context does not depend on
        which rows share its batch (sampling and re-scoring batch rows differently)."""
        feats = [self.text_features(p) for p in prompts]
        keys = [f.shape[1] for f in feats] if uncond else list(prompts)
        slot = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        texts = list(slot) if uncond else [feats[keys.index(k)] for k in slot]
        with self._amp():
            ctxs = self.model.encode_texts(texts)
        return gather_context(ctxs, [slot[k] for k in keys])

    # -- tokenizer side -----------------------------------------------------------------------------
    def bits(self, traj: Trajectory) -> list[torch.Tensor]:
        """The stored tokens as bits: per step a LongTensor [B, h_t*w_t, d]."""
        return [unpack_bits(i, self.bits_per_token) for i in traj.idx]

    def _next_inputs(self, bits: list[torch.Tensor]) -> list[torch.Tensor]:
        """Inputs [B, h*w, d] of steps 2..len(bits)+1 (at most T) from the bits of steps 1..len(bits)."""
        maps = self.vae.next_inputs([b.to(self.device) for b in bits], self.schedule)
        return [x.flatten(2).transpose(1, 2).float() for x in maps]

    @torch.no_grad()
    def decode(self, traj: Trajectory) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1]; a prefix decodes to its coarse preview."""
        return self.vae.decode_bits([b.to(self.device) for b in self.bits(traj)], self.schedule).float().cpu()

    # -- one scale of sampling ------------------------------------------------------------------------
    def _insertion_block(self, sampler: SamplerConfig) -> int | None:
        """The block after which hidden states mix (None: guidance on the logits)."""
        k = sampler.cfg_insertion_layer
        if k == 0:
            return None
        depth = self.model.cfg.depth
        if not -depth < k < 0:
            raise SamplerConfigError(f"cfg_insertion_layer={k} needs {-depth + 1} <= k <= -1 for a depth-{depth} model")
        return depth + k

    def _scale(self, ctxs: dict, caches: dict, k: int, x_in, cfg: float, mix_at: int | None) -> dict:
        """Raw logits [B, l, 2d] of step k per branch: "cond" (the conditional model), "uncond",
        and with hidden guidance "mixed" (the guided path); appends to the caches."""
        m, lay, depth = self.model, self._layout(), self.model.cfg.depth
        out = {}
        with self._amp():
            xs = {b: m.embed(ctxs[b], x_in, lay, k, k + 1) for b in ctxs}
            if mix_at is not None and "uncond" in ctxs:
                hc = m.run_blocks(xs["cond"], ctxs["cond"], lay, k, k + 1, 0, mix_at + 1, caches["cond"])
                hu = m.run_blocks(xs["uncond"], ctxs["uncond"], lay, k, k + 1, 0, mix_at + 1, caches["uncond"])
                g = m.run_blocks(mix_hidden(hc, hu, cfg), ctxs["cond"], lay, k, k + 1, mix_at + 1, depth,
                                 caches["cond"])
                out["mixed"] = m.logits(g, ctxs["cond"])
                if caches.get("pure") is not None:
                    h = m.run_blocks(hc, ctxs["cond"], lay, k, k + 1, mix_at + 1, depth, caches["pure"])
                    out["cond"] = m.logits(h, ctxs["cond"])
            else:
                for b in ctxs:
                    out[b] = m.logits(m.run_blocks(xs[b], ctxs[b], lay, k, k + 1, 0, depth, caches[b]), ctxs[b])
        return out

    def _layout(self) -> dict:
        return self.model.layout(self.schedule.grids, self.rope_hw, self.device)

    def _distribution(self, out: dict, cfg: float, s: SamplerConfig, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, truncated) bit logits [B, l, d, 2] of the distribution sampling draws from (at
        temperature tau: `s.temperature_at(step, schedule)`)."""
        if "mixed" in out:
            raw = bit_view(out["mixed"]).mul(1 / tau)
        else:
            raw = guided_bit_logits(bit_view(out["cond"]), None if "uncond" not in out else bit_view(out["uncond"]),
                                    cfg, tau)
        return raw, truncate_bits(raw, s.top_k, s.top_p)

    def _logprobs(self, out: dict, cfg: float, s: SamplerConfig, tau: float, bits_Bld: torch.Tensor) -> torch.Tensor:
        if s.logprob_mode == "plain":
            return token_logprobs(bit_view(out["cond"]), bits_Bld)
        raw, cut = self._distribution(out, cfg, s, tau)
        return token_logprobs(keep_drawn(cut, raw, bits_Bld), bits_Bld)

    # -- rollouts ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: list[str] | None, n: int, sampler: SamplerConfig,
                generator: torch.Generator | None = None, start: Trajectory | None = None,
                steps: int | None = None) -> Trajectory:
        """Sample n trajectories per prompt, or n continuations per row of `start` (a prefix from
        `traj.cut(m)`), up to `steps` grids in all (default: all of them)."""
        T = self.schedule.num_steps
        base, m, group, steps = rollout_origin(prompts, n, sampler, start, steps, T)
        sampler.check_schedule(self.schedule)
        if start is None:
            self.check_prompts(base)
        mix_at = self._insertion_block(sampler)
        saved = start.state if start is not None else None
        if isinstance(saved, _SamplerState) and saved.ctxs.keys() == self._branches(sampler, mix_at):
            st, fork = saved, True  # the prefix's own sampling state: fork it, recompute nothing
        else:
            st = self._fresh_state(base, sampler, mix_at)
            # Prefill the prefix scale by scale with the calls that sampled it: the caches, and so
            # the continuation, are then exactly what an uninterrupted rollout would have had.
            for k in range(m):
                self._scale(st.ctxs, st.caches, k, st.x_next, 1 + sampler.guidance(k, T), mix_at)
                st.bits.append(unpack_bits(start.idx[k].to(self.device), self.bits_per_token))
                st.x_next = self._next_inputs(st.bits)[-1] if k + 1 < T else None
            fork = n > 1
        if fork:
            st = _SamplerState({b: fork_context(c, n) for b, c in st.ctxs.items()},
                               {b: None if c is None else fork_caches(c, n) for b, c in st.caches.items()},
                               [b.repeat_interleave(n, 0) for b in st.bits],
                               None if st.x_next is None else st.x_next.repeat_interleave(n, 0))
        idx_out = [i.repeat_interleave(n, 0) for i in start.idx] if start is not None else []
        lp_out = [lp.repeat_interleave(n, 0) for lp in start.logprobs] if start is not None else []
        for k in range(m, steps):
            cfg, tau = 1 + sampler.guidance(k, T), sampler.temperature_at(k, self.schedule)
            out = self._scale(st.ctxs, st.caches, k, st.x_next, cfg, mix_at)
            bits = draw_bits(self._distribution(out, cfg, sampler, tau)[1], generator)
            lp_out.append(self._logprobs(out, cfg, sampler, tau, bits))
            idx_out.append(pack_bits(bits))
            st.bits.append(bits)
            st.x_next = self._next_inputs(st.bits)[-1] if k + 1 < T else None
        rows = [p for p in base for _ in range(n)]
        parent = torch.arange(len(base)).repeat_interleave(n) if start is not None else None
        return Trajectory(rows, [i.cpu() for i in idx_out], [lp.float().cpu() for lp in lp_out], sampler,
                          self.schedule, group.repeat_interleave(n), parent, st if steps < T else None)

    def _branches(self, sampler: SamplerConfig, mix_at: int | None) -> set:
        return {"cond", "uncond"} if sampler.uses_uncond else {"cond"}

    def _fresh_state(self, prompts: list[str], sampler: SamplerConfig, mix_at: int | None) -> _SamplerState:
        ctxs = {"cond": self._context(prompts, False)}
        if sampler.uses_uncond:
            ctxs["uncond"] = self._context(prompts, True)
        caches = {b: self.model.new_cache() for b in ctxs}
        pure = mix_at is not None and sampler.uses_uncond and sampler.logprob_mode == "plain"
        caches["pure"] = self.model.new_cache() if pure else None
        return _SamplerState(ctxs, caches, [], None)

    # -- re-scoring ----------------------------------------------------------------------------------------
    def logprobs(self, traj: Trajectory, steps: list[int] | None = None) -> list[torch.Tensor]:
        """Re-score the stored tokens under the current weights: teacher forcing scale by scale
        through the very calls that sampled them (`_scale`, with caches that keep the graph), one
        batch per branch the mode needs. Differentiable. `steps`: 0-based steps to return."""
        s, T = traj.sampler, self.schedule.num_steps
        bits = [b.to(self.device) for b in self.bits(traj)]
        outs = self.teacher_logits(traj, bits)
        return [self._logprobs(outs[k], 1 + s.guidance(k, T), s, s.temperature_at(k, self.schedule), bits[k])
                for k in (range(traj.num_steps) if steps is None else steps)]

    def teacher_logits(self, traj: Trajectory, bits: list[torch.Tensor] | None = None) -> list[dict]:
        """Per stored step, the raw logits [B, h*w, 2d] of each branch the trajectory's mode needs
        ("cond", "uncond", or "mixed" under hidden-state guidance)."""
        s, T = traj.sampler, self.schedule.num_steps
        if bits is None:
            bits = [b.to(self.device) for b in self.bits(traj)]
        with torch.no_grad():
            inputs = self._next_inputs(bits[:-1])[: len(bits) - 1] if len(bits) > 1 else []
        need_uncond = s.rescore_needs_uncond
        mix_at = self._insertion_block(s) if need_uncond else None
        ctxs = {"cond": self._context(traj.prompts, False)}
        if need_uncond:
            ctxs["uncond"] = self._context(traj.prompts, True)
        caches = {b: self.model.new_cache() for b in ctxs}
        caches["pure"] = None
        return [self._scale(ctxs, caches, k, None if k == 0 else inputs[k - 1], 1 + s.guidance(k, T), mix_at)
                for k in range(traj.num_steps)]

    @torch.no_grad()
    def trajectory_from_tokens(self, prompts: list[str], bits: list[torch.Tensor],
                               sampler: SamplerConfig | None = None) -> Trajectory:
        """A trajectory of given tokens (bits: per step a LongTensor [B, h_t*w_t, d] in {0, 1};
        steps 1..m of the schedule), with log-probs re-scored under `sampler`'s mode (default:
        the official sampler, plain log-probs). Each row is its own group."""
        sampler = sampler or official_sampler()
        self.check_prompts(list(prompts))
        B, d = len(prompts), self.bits_per_token
        if not 1 <= len(bits) <= self.schedule.num_steps:
            raise ValueError(f"bits must hold 1..{self.schedule.num_steps} steps, got {len(bits)}")
        for t, b in enumerate(bits):
            want = (B, self.schedule.tokens_per_step[t], d)
            if tuple(b.shape) != want:
                raise ValueError(f"bits of step {t + 1} must be [B, h*w, d] = {list(want)}, got {list(b.shape)}")
            if b.is_floating_point() or ((b != 0) & (b != 1)).any():
                raise ValueError(f"bits of step {t + 1} must be integers in {{0, 1}}")
        idx = [pack_bits(b.long()).cpu() for b in bits]
        zeros = [torch.zeros_like(i, dtype=torch.float32) for i in idx]
        traj = Trajectory(list(prompts), idx, zeros, sampler, self.schedule, torch.arange(B))
        traj.logprobs = [lp.float().cpu() for lp in self.logprobs(traj)]
        return traj
