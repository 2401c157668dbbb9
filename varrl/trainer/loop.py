"""The RL loop, top to bottom: rollouts -> rewards -> advantages -> update, with held-out
evaluations, checkpoints that resume bit-identically, and the run directory's report."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from varrl.algorithms.grpo import degenerate_groups
from varrl.algorithms.masks import batch_step_masks
from varrl.algorithms.panw import step_weights
from varrl.algorithms.stages import stage_at
from varrl.checkpoint import CheckpointError, latest_checkpoint
from varrl.config import ConfigError
from varrl.data.prompts import ClassPrompts, JsonlPrompts, SynthPrompts
from varrl.device import resolve_device
from varrl.policy.load import load_policy, save_policy
from varrl.policy.lora import BaseModelView, attach_lora, merge_adapters
from varrl.policy.sampler import NonFiniteError
from varrl.rewards import build_reward
from varrl.trainer.batches import StageBatch, full_batch, per_scale_batch, prefix_batch, suffix_batch
from varrl.trainer.config import TrainRunConfig
from varrl.trainer.credit import Advantages, CreditInputs, advantages
from varrl.trainer.dist import DistInfo, barrier, broadcast_flag, gather_objects
from varrl.trainer.eval_record import save_readings
from varrl.trainer.evaluate import evaluate, pooled_metrics
from varrl.trainer.fsdp import adapter_state_dicts, full_state_dicts, shard_policies_
from varrl.trainer.params import frozen_reference, select_trainable
from varrl.trainer.report import RunWriter, plot_rewards, write_report
from varrl.trainer.state import CheckpointWriteError, RngState, resume_train_checkpoint, save_train_checkpoint
from varrl.trainer.steplog import StepLog, no_signal, step_metrics  # noqa: F401  (no_signal: public here)
from varrl.trainer.update import NonFiniteLossError, UpdatePlan, policy_update


def prompt_sources(cfg: TrainRunConfig, normalize=None):
    """(train, held-out) prompt sources; `normalize` (the policy's prompt_text) maps the target words
    of prompt files to what the model reads."""
    d = cfg.data
    if d.classes is not None:  # a class-conditional model: labels instead of text prompts
        held_out = d.eval_classes if d.eval_classes is not None else d.classes
        return (ClassPrompts(d.classes, cfg.run.seed),
                ClassPrompts(held_out, eval_seed(cfg) + 1, "data.eval_classes"))
    train = JsonlPrompts(d.prompts_file, normalize) if d.prompts_file else SynthPrompts(d.synth, "train", cfg.run.seed)
    ev = (JsonlPrompts(d.eval_prompts_file, normalize) if d.eval_prompts_file
          else SynthPrompts(d.synth, "heldout", eval_seed(cfg)))
    return train, ev


def eval_seed(cfg: TrainRunConfig) -> int:
    """Seed of the held-out prompts and their sampling noise: by default the same for every run, so
    that runs of an ablation (and the seeds of one cell) are compared on identical evaluations."""
    return cfg.run.seed if cfg.train.eval_seed is None else cfg.train.eval_seed


def warmup_lr(step: int, base: float, warmup: int) -> float:
    return base * min(1.0, (step + 1) / max(1, warmup))


class Trainer:
    """Holds what a run needs (policy, frozen reference, optimizer, generator, reward, writer) and
    runs it: `run()` is the loop, `step()` one rollout -> reward -> advantage -> update round."""

    def __init__(self, cfg: TrainRunConfig, run_dir: Path, info: DistInfo, resume: bool, warnings=(),
                 open_run: bool = True):
        self.cfg, self.run_dir, self.info, self.t_start = cfg, run_dir, info, time.perf_counter()
        tc = cfg.train
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        torch.manual_seed(cfg.run.seed)
        pc = cfg.policy
        device = resolve_device(pc.device, info.local_rank if info.world > 1 else None)
        self.policy = load_policy(pc.path, device=device, vae=pc.vae,
                                  text_encoder=pc.text_encoder, schedule=pc.schedule, aspect_ratio=pc.aspect_ratio,
                                  dtype=pc.dtype)
        if tc.grad_checkpointing:
            if not hasattr(self.policy.model, "grad_checkpointing"):
                raise ConfigError("train.grad_checkpointing is implemented for Infinity models only; set it to false",
                                  "train.grad_checkpointing")
            self.policy.model.grad_checkpointing = True
        merge_adapters(self.policy)  # a LoRA-trained start: its adapters fold into the weights this run starts from
        self.lora = attach_lora(self.policy, tc.lora) if tc.lora.enabled else None
        self.lora_checked = self.base_saved = False
        if self.lora is not None:  # only the adapters train; the reference is the base with them off
            self.ref_policy = BaseModelView(self.policy) if cfg.rl.uses_kl() else None
        else:
            self.ref_policy = frozen_reference(self.policy) if cfg.rl.uses_kl() else None  # frozen start
        if tc.fsdp:  # adapters first (they shard with their layers), the optimizer after: it holds the shards
            shard_policies_(self.policy, None if self.lora is not None else self.ref_policy)
        params = self.lora.parameters() if self.lora is not None else select_trainable(self.policy.model, tc.trainable)
        self.optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + info.rank)  # this rank's noise
        self.train_prompts, eval_source = prompt_sources(cfg, self.policy.prompt_text)
        self.eval_records = [eval_source[i] for i in range(tc.eval_prompts)]
        # Fail now, not an hour in, on a prompt the model cannot read.
        for source in (self.train_prompts, eval_source):
            if isinstance(source, (JsonlPrompts, ClassPrompts)):
                source.check(lambda p: self.policy.check_prompts([p]))
        self.policy.check_prompts([r.prompt for r in self.eval_records])
        self.reward = build_reward(cfg.reward)
        self.mine = info.shard(tc.prompts_per_step)
        self.m = resolve_split(cfg.rl.vmr.m, self.policy.schedule) if cfg.rl.vmr.enabled else None
        self.splits = resolve_splits(cfg.rl.vmr.splits, self.policy.schedule) if cfg.rl.per_scale else None
        self.last = resolve_last_grid(cfg.rl.last_grid, self.policy.schedule)
        if cfg.sampler.tail_after is not None:  # fail before the run directory exists, not at the first rollout
            resolve_step(cfg.sampler.tail_after, self.policy.schedule, "sampler.tail_after")
        if cfg.rl.region_credit.enabled and not self.reward.per_word:
            raise ConfigError(f"rl.region_credit.enabled needs a reward that scores each target word (text_ocr "
                              f"with a weight other than 0); reward.weights is {dict(cfg.reward.weights)}",
                              "rl.region_credit.enabled")
        # Up to here nothing is written: a bad input fails before the run directory exists.
        self.start, self.wall_before, self.writer = 0, 0.0, None
        self.resuming, self.start_warnings = resume, (*warnings, *self.unfamiliar_prompts(eval_source))
        self.noted: set[str] = set()  # kinds of "the update did nothing" already reported this session
        if open_run:
            self.open()

    def unfamiliar_prompts(self, eval_source) -> list[str]:
        """A warning (in a list) when the run's prompts are unlike those the model was trained on
        (its model directory's prompt form): every prompt of a file, the first 64 of the synthetic
        source. The policy then stays quiet about them during rollouts."""
        form = getattr(self.policy, "prompt_form", None)
        if form is None:
            return []
        self.policy.form_warned = True
        prompts = [r.prompt for r in self.eval_records]
        for source in (self.train_prompts, eval_source):
            n = len(source) if isinstance(source, JsonlPrompts) else min(64, len(source))
            prompts += [source[i].prompt for i in range(n)]
        odd = next((p for p in prompts if not form.fits(p)), None)
        return [] if odd is None else [form.warning(odd)]

    def open(self) -> None:
        """Start on the run directory (under varrl train, once it is locked): on resume, load the
        newest intact checkpoint; open the metrics writer; record the warnings found at the start."""
        if self.resuming:
            self.resume()
        # The log keeps what the checkpoint's step had written (its evaluation included); with no
        # checkpoint yet, nothing: the step-0 evaluation is done again.
        resume_step = (self.start if self.start > 0 else -1) if self.resuming else None
        self.writer = RunWriter(self.run_dir, resume_step) if self.info.main else None
        for w in self.start_warnings:  # found before the start (varrl.trainer.checks): kept for report.md
            self.note(self.start, "start", w, echo=False)

    def resume(self) -> None:
        """Continue from the newest intact checkpoint (none yet: from the start); every rank must
        pick the same one."""
        info, skipped = self.info, []

        def warn(text: str) -> None:
            skipped.append(text)
            if info.main:
                tqdm.write(f"WARNING: {text}", file=sys.stderr)

        found = resume_train_checkpoint(self.run_dir / "checkpoints", self.policy.model, self.optimizer, info.rank,
                                        info.world, warn, self.lora)
        steps = gather_objects(info, None if found is None else found[1]["step"])
        if len(set(steps)) > 1:
            raise CheckpointError(f"the processes found different newest intact checkpoints (steps {steps}) in "
                                  f"{self.run_dir / 'checkpoints'}; do they all see the same files?")
        if found is not None:
            ckpt, state, rng = found
            if skipped and info.main:
                tqdm.write(f"resuming from {ckpt} (step {state['step']})", file=sys.stderr)
            rng.restore(self.gen)
            self.start = state["step"]
            threads = state.get("torch_threads")  # checkpoints before this field: unknown, no warning
            if info.main and threads is not None and threads != torch.get_num_threads() \
                    and self.policy.device.type == "cpu":
                tqdm.write(f"WARNING: {ckpt} was written with {threads} torch threads and this resume has "
                           f"{torch.get_num_threads()}; CPU float rounding depends on the thread count, so the run "
                           f"goes on as another sample, not bit-identical to an uninterrupted one (resume with "
                           f"train.threads={threads} for that)", file=sys.stderr)
            self.wall_before = float(state.get("wall_s", 0.0))  # checkpoints before this field: unknown, 0

    def run(self) -> dict | None:
        tc = self.cfg.train
        if self.start == 0:
            self.evaluate(0)
        bar = tqdm(range(self.start, tc.steps), initial=self.start, total=tc.steps, desc=f"train {self.run_dir.name}",
                   dynamic_ncols=True, disable=not self.info.main)
        step = self.start
        try:
            for step in bar:
                m = self.step(step)
                if m is not None:
                    bar.set_postfix(reward=f"{m['reward/mean']:.3f}", kl=f"{m['policy/kl']:.4f}",
                                    img_s=f"{m['perf/images_per_s']:.1f}")
                last = step + 1 == tc.steps
                if last or (tc.eval_every and (step + 1) % tc.eval_every == 0):
                    self.evaluate(step + 1)
                if last or (step + 1) % tc.save_every == 0:
                    self.save(step + 1)
        except NonFiniteError as e:
            good = latest_checkpoint(self.run_dir / "checkpoints")
            raise NonFiniteLossError(f"step {step + 1}: {e}. The run stopped; the last good checkpoint is "
                                     f"{good or 'none (no step finished)'}. Lower train.lr or raise rl.kl_beta, "
                                     f"then resume with --resume {self.run_dir}") from None
        finally:
            self.reward.close()
        return self.finish()

    def set_lr(self, step: int) -> float:
        """The optimizer's learning rate for `step` (linear warm-up, then train.lr)."""
        lr = warmup_lr(step, self.cfg.train.lr, self.cfg.train.warmup)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def step(self, step: int) -> dict | None:
        cfg, tc, info = self.cfg, self.cfg.train, self.info
        lr = self.set_lr(step)
        # 1. Rollouts and rewards: this rank's prompts, each prompt's whole group on this rank.
        records = [self.train_prompts[step * tc.prompts_per_step + i] for i in self.mine]
        batch = self.rollout(step, records)
        # 2. Advantages over the gathered batch (the same numbers on every rank), then this rank's rows.
        every = gather_objects(info, CreditInputs.of(batch, cfg.rl))
        adv = advantages(every, info.rank, batch, cfg.rl, self.policy.schedule.grids)
        all_returns, all_groups = torch.cat([p.returns for p in every]), torch.cat([p.group for p in every])
        skipped, flat = degenerate_groups(all_returns, all_groups)
        if skipped and info.main and skipped < len(torch.unique(all_groups)):
            tqdm.write(f"warning: step {step + 1}: {skipped} group(s) got only NaN rewards; skipped")
        # 3. Update the rows that have a return, on the steps this stage trains.
        t0 = time.perf_counter()
        upd = self.update(batch, adv)
        update_s = time.perf_counter() - t0
        # 4. Log, reduced over ranks.
        parts = gather_objects(info, StepLog(batch.reward.scores, batch.reward.components, batch.returns.numpy(), upd,
                                             batch.rollout_s, batch.reward_wait_s, update_s))
        if self.writer is None:
            return None
        m = step_metrics(parts, batch.stage, skipped, flat, lr)
        if batch.values is not None:  # per-scale: the mean soft value at each split, over all ranks
            values = torch.cat([p.values for p in every])
            for m_j, v in zip(self.splits, values.T):
                m[f"stage/per_scale/value_{m_j}"] = float(v.nanmean())  # NaN only when no value applies
        self.writer.metrics(step + 1, m)
        for kind, text in no_signal(m, len(torch.unique(all_groups)), skipped, cfg.train.trainable):
            self.note(step + 1, kind, f"step {step + 1}: {text}")
        return m

    def note(self, step: int, kind: str, text: str, echo: bool = True) -> None:
        """A loud warning, once per kind and session: on the console and in metrics.jsonl, from which
        report.md lists it."""
        if self.writer is None or (kind != "start" and kind in self.noted):
            return
        self.noted.add(kind)
        if echo:
            tqdm.write(f"WARNING: {text}", file=sys.stderr)
        self.writer.metrics(step, {"warning": text})

    def rollout(self, step: int, records) -> StageBatch:
        cfg, tc, vmr = self.cfg, self.cfg.train, self.cfg.rl.vmr
        args = (cfg.sampler, self.gen, self.reward, tc.micro_batch, self.mine.start)
        if not vmr.enabled:
            return full_batch(self.policy, records, tc.group_size, *args).up_to(self.last)
        if self.splits:
            return per_scale_batch(self.policy, records, tc.group_size, vmr.k, self.splits, vmr.eta, *args)
        if stage_at(step, cfg.rl.alternation, tc.steps) == "prefix":
            return prefix_batch(self.policy, records, tc.group_size, vmr.k, self.m, vmr.eta, *args)
        return suffix_batch(self.policy, records, vmr.suffix_prefixes, tc.group_size, self.m, *args)

    def update(self, batch: StageBatch, adv: Advantages | torch.Tensor, optimizer: torch.optim.Optimizer | None = None):
        """One policy update on the rows of `batch` that have a return (NaN: the reward did not
        apply), with this rank's advantages (`Advantages`, or per sample [B]); `optimizer` defaults
        to the run's own (benchmarks pass a zero-LR one to take the gradient without moving the weights)."""
        adv = adv if isinstance(adv, Advantages) else Advantages(adv)
        keep = torch.nonzero(~torch.isnan(batch.returns)).flatten()
        kept = adv.select(keep)
        plan = self.plan(batch, keep)
        plan.advantages = kept.steps
        with nullcontext() if self.lora is None else self.lora.dropout_active():
            out = policy_update(self.policy, self.ref_policy, batch.traj.select(keep), kept.sample_B, plan,
                                self.cfg.rl, self.cfg.train, self.optimizer if optimizer is None else optimizer,
                                self.info, batch.traj.select([0]))
        if self.lora is not None and not self.lora_checked and len(keep):
            self.lora.check_reached()  # a layer the model never calls would hold a dead adapter
            self.lora_checked = True
        return out

    def local_advantages(self, batch: StageBatch) -> Advantages:
        """The advantages of one batch on its own (the step gathers its batch over ranks first)."""
        return advantages([CreditInputs.of(batch, self.cfg.rl)], 0, batch, self.cfg.rl, self.policy.schedule.grids)

    def plan(self, batch: StageBatch, keep: torch.Tensor) -> UpdatePlan:
        """PANW weights and MP masks for the steps this batch trains (plain GRPO: neither)."""
        rl, sched = self.cfg.rl, self.policy.schedule
        weights = step_weights([sched.tokens_per_step[t] for t in batch.steps], rl.panw.alpha)
        masks = None
        if rl.mp.enabled and batch.boxes is not None:
            boxes = [batch.boxes[i] for i in keep.tolist()]
            H, W = batch.images.shape[1:3]
            all_steps = batch_step_masks(boxes, (H, W), list(sched.grids), rl.mp.pool, rl.mp.threshold,
                                         rl.mp.dilation)
            masks = [all_steps[t] for t in batch.steps]
        return UpdatePlan(batch.steps, weights, masks, rl.mp.mask_kl, rl.kl_beta_for(batch.stage))

    def evaluate(self, at: int) -> None:
        tc = self.cfg.train
        t0 = time.perf_counter()
        seeds = [eval_seed(self.cfg) + i for i in range(tc.eval_noise_seeds)]
        results = [evaluate(self.policy, self.eval_records, self.cfg.sampler, s, self.reward, tc.micro_batch,
                            self.info) for s in seeds]
        res, metrics = results[0], pooled_metrics(results)  # the sample grid shows the first seed's draw
        if self.writer is not None:
            save_readings(self.run_dir, at, results, self.eval_records, seeds)
            # perf/eval_s: what an evaluation costs, to weigh train.eval_every against a run's wall time.
            self.writer.metrics(at, {**{f"eval/{k}": v for k, v in metrics.items()},
                                     "perf/eval_s": time.perf_counter() - t0})
            self.writer.samples(at, res.images, res.captions, tc.samples_in_grid)
            if self.cfg.rl.mp.enabled:
                self.writer.mask_sheet(at, res.images, res.boxes, list(self.policy.schedule.grids), self.cfg.rl.mp)
            tqdm.write(f"eval @ step {at}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                          if v is not None and "/" not in k))

    def save(self, at: int) -> None:
        rngs = gather_objects(self.info, RngState.capture(self.gen))
        if self.lora is None:  # with FSDP: gathered on rank 0
            model_sd, optim_sd = full_state_dicts(self.policy.model, self.optimizer)
            base_sd = model_sd
        else:  # the adapters; the frozen base only until this session has written it once
            if self.base_saved and broadcast_flag(
                    self.info, self.info.main and not (self.run_dir / "last" / "model.safetensors").exists()):
                # Someone removed last/'s base since: gather it again. Under FSDP that is a collective,
                # so every rank must take the same branch (rank 0 alone sees the folder).
                self.base_saved = False
            model_sd, base_sd, optim_sd = adapter_state_dicts(self.lora, self.optimizer, not self.base_saved)
        if self.info.main:
            where = self.run_dir / "checkpoints"
            try:
                save_train_checkpoint(where, at, model_sd, optim_sd, rngs,
                                      {"data_position": at * self.cfg.train.prompts_per_step, "wall_s": self.wall_s(),
                                       "torch_threads": torch.get_num_threads()},
                                      self.cfg.train.keep_checkpoints, self.lora)
                where = self.run_dir / "last"
                # With adapters the base is frozen: after this session's first save only the adapters are new.
                save_policy(self.policy, where, {"trained": {"rl_steps": at, "run": self.run_dir.name}},
                            keep_base=self.base_saved, model_state=base_sd,
                            adapter_state=None if self.lora is None else model_sd)
            except (OSError, RuntimeError) as e:  # a full disk shows as either (torch's zip writer: RuntimeError)
                raise CheckpointWriteError(where, at, e, self.run_dir) from e
        self.base_saved = self.lora is not None  # on every rank: under FSDP the base's gathering is a collective
        barrier(self.info)

    def finish(self) -> dict | None:
        if self.writer is None:
            return None
        self.writer.close()
        plot_rewards(self.run_dir)
        tc = self.cfg.train
        return write_report(self.run_dir, {"steps": tc.steps, "eval_prompts": tc.eval_prompts,
                                           "eval_noise_seeds": tc.eval_noise_seeds,
                                           "method": self.cfg.rl.method,
                                           "wall_s": round(self.wall_s(), 1)})

    def wall_s(self) -> float:
        """Seconds this run has trained, over all its sessions up to now: a resumed run adds the
        time its checkpoint recorded (time lost after the last checkpoint of a killed session is
        not counted, as those steps are redone)."""
        return self.wall_before + time.perf_counter() - self.t_start


def resolve_step(spec: int | str, schedule, key: str) -> int:
    """A config value naming a step (a count, `64px` or `8x8`) as a step count; a bad one is a
    config error naming `key`."""
    try:
        return schedule.resolve_step(spec)
    except ValueError as e:
        raise ConfigError(f"{key}={spec!r}: {e}", key) from e


def resolve_split(spec: int | str, schedule, key: str = "rl.vmr.m") -> int:
    """rl.vmr.m (or one entry of rl.vmr.splits) as a step count: the prefix generates grids 1..m."""
    m = resolve_step(spec, schedule, key)
    if not 1 <= m < schedule.num_steps:
        raise ConfigError(f"{key}={spec!r} is step {m}; VMR needs a split inside 1..{schedule.num_steps - 1} "
                          f"(grids {[h for h, _ in schedule.grids]})", key)
    return m


def resolve_last_grid(spec: int | str | None, schedule) -> int:
    """rl.last_grid as a step count (null: the schedule's last step)."""
    return schedule.num_steps if spec is None else resolve_step(spec, schedule, "rl.last_grid")


def resolve_splits(specs: list[int | str], schedule) -> list[int]:
    """rl.vmr.splits as strictly increasing step counts."""
    steps = [resolve_split(s, schedule, f"rl.vmr.splits[{i}]") for i, s in enumerate(specs)]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ConfigError(f"rl.vmr.splits={list(specs)} are steps {steps}; they must increase strictly",
                          "rl.vmr.splits")
    return steps
