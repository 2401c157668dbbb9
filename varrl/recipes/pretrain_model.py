"""Stage 2 of pretraining: the nano transformer, teacher-forced on tokenized synthetic images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from varrl.algorithms.masks import batch_step_masks
from varrl.checkpoint import (
    atomic_write_text,
    latest_checkpoint,
    load_into,
    load_object,
    load_state,
    load_tensors,
    save_checkpoint,
    write_manifest,
)
from varrl.config import to_dict
from varrl.data.prompt_form import PromptForm
from varrl.data.synth import SynthGenerator
from varrl.device import resolve_device
from varrl.eval.heldout import heldout_prompts, measure_word_accuracy
from varrl.models.nano import NanoVAR
from varrl.models.text import batch_prompts
from varrl.models.tokenizer import VQTokenizer
from varrl.policy.nano_policy import NanoPolicy
from varrl.policy.sampler import SamplerConfig
from varrl.recipes.common import MetricLog, Timer, cosine_lr, synth_batch
from varrl.viz import image_grid


def build_nano(cfg) -> tuple[NanoVAR, VQTokenizer]:
    tok = VQTokenizer(cfg.tokenizer)
    model = NanoVAR(cfg.model, cfg.tokenizer.schedule(), cfg.tokenizer.vocab_size, cfg.tokenizer.code_dim)
    return model, tok


def train_model(cfg, run_dir: Path, tok_ckpt: Path, resume_ckpt: Path | None, ocr=None) -> NanoPolicy:
    mc = cfg.model_train
    out = run_dir / "model"
    (out / "samples").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.run.seed)
    dev = resolve_device(cfg.device)
    model, tok = build_nano(cfg)
    model.to(dev)  # before the optimizer, so its state lives there too
    tok.to(dev)
    tok.load_state_dict(load_tensors(tok_ckpt / "tokenizer.safetensors"))
    tok.eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=mc.lr, betas=(0.9, 0.95), weight_decay=mc.weight_decay)
    start = 0
    if mc.init_from and resume_ckpt is None:
        src = Path(mc.init_from) / "model.safetensors"
        load_into(model, load_tensors(src), str(src))
    if resume_ckpt is not None:
        model.load_state_dict(load_tensors(resume_ckpt / "model.safetensors"))
        opt.load_state_dict(load_object(resume_ckpt / "optimizer.pt"))
        start = load_state(resume_ckpt)["step"]
    policy = NanoPolicy(model, tok)
    gen = SynthGenerator(cfg.data, "train", cfg.run.seed)
    eval_prompts, eval_words = heldout_prompts(cfg.data, mc.eval_prompts, max_regions=2, seed=cfg.run.seed)
    log = MetricLog(out / "metrics.jsonl", start)
    timer = Timer()
    V = cfg.tokenizer.vocab_size
    bar = tqdm(range(start, mc.steps), initial=start, total=mc.steps, desc="model", dynamic_ncols=True)
    for step in bar:
        lr = cosine_lr(step, mc.steps, mc.lr, mc.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        img, samples = synth_batch(gen, step * mc.batch_size, mc.batch_size)
        img = img.to(dev)
        # Condition dropout decided by (seed, step) alone, so a resumed run draws the same.
        drop = torch.rand(mc.batch_size, generator=torch.Generator().manual_seed(cfg.run.seed * 7919 + step))
        prompts = ["" if d < mc.cond_drop else s.prompt for d, s in zip(drop.tolist(), samples)]
        with torch.no_grad():
            idx_list = tok.encode(img)
            inputs = tok.quantizer.teacher_inputs(idx_list)
        ids, mask = batch_prompts(prompts, cfg.model.max_text_len, allow_empty=True)
        logits = model(model.encode_text(ids.to(dev), mask.to(dev)), inputs)
        target = torch.cat(idx_list, dim=1)
        ce_BL = F.cross_entropy(logits.reshape(-1, V), target.flatten(), reduction="none").view_as(target)
        w_BL = token_weights(samples, tuple(img.shape[-2:]), model.schedule, mc.text_weight).to(dev)
        loss = (ce_BL * w_BL).sum() / w_BL.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), mc.grad_clip)
        opt.step()
        if (step + 1) % mc.log_every == 0:
            with torch.no_grad():
                acc = (logits.argmax(-1) == target).float().mean().item()
            dt = timer.lap() / mc.log_every
            log.write(step + 1, {"model/loss": loss.item(), "model/token_acc": acc, "model/grad_norm": gnorm.item(),
                                 "model/lr": lr, "perf/step_s": dt})
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.3f}", s_per_step=f"{dt:.2f}")
        last = step + 1 == mc.steps
        if (step + 1) % mc.save_every == 0 or last:
            save_checkpoint(out / "checkpoints", step + 1, {"model": model.state_dict()},
                            {"step": step + 1, "stage": "model"}, {"optimizer": opt.state_dict()})
        if ocr is not None and ((step + 1) % mc.eval_every == 0 or last):
            sampler = SamplerConfig(cfg=mc.eval_cfg)
            res = measure_word_accuracy(policy, eval_prompts, eval_words, sampler, cfg.run.seed, ocr)
            log.write(step + 1, {"eval/word_acc": res.word_acc, "eval/ned": res.ned})
            tqdm.write(f"model step {step + 1}: held-out word accuracy {res.word_acc:.3f}, NED {res.ned:.3f}")
            image_grid(res.images[:16], [f"{p} | read: {' '.join(r)}" for p, r in zip(res.prompts, res.reads)][:16],
                       cols=8, caption_lines=4).save(out / "samples" / f"step_{step + 1:06d}.png")
    return policy


def token_weights(samples, image_hw: tuple[int, int], schedule, text_weight: float) -> torch.Tensor:
    """[B, L] loss weights: text_weight on the tokens of every grid that cover a word (one cell of
    dilation, carried to coarser grids as mask propagation does), 1 elsewhere."""
    if text_weight == 1.0:
        return torch.ones(len(samples), schedule.total_tokens)
    masks = batch_step_masks([list(s.boxes) for s in samples], image_hw, list(schedule.grids), "max", 0.5, 1)
    return 1.0 + (text_weight - 1.0) * torch.cat(masks, dim=1)


def _init_history(init_from: str | None) -> dict | None:
    """What the starting weights of this run had been trained on (a chain for multi-phase recipes)."""
    if not init_from or not (Path(init_from) / "config.json").exists():
        return None
    meta = json.loads((Path(init_from) / "config.json").read_text())
    return {"from": str(init_from), "trained": meta.get("trained")}


def export_weights(cfg, run_dir: Path, dest: Path | None = None) -> Path:
    """Write the shippable model directory (config.json + safetensors) to run_dir/export or dest."""
    dest = dest or run_dir / "export"
    tok_ckpt = latest_checkpoint(run_dir / "tokenizer" / "checkpoints")
    model_ckpt = latest_checkpoint(run_dir / "model" / "checkpoints")
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    # Half precision halves the repository's share of weights; load_policy computes in fp32.
    dtype = {"float32": torch.float32, "float16": torch.float16}[cfg.export_dtype]
    for src, name in ((tok_ckpt, "tokenizer"), (model_ckpt, "model")):
        sd = load_tensors(src / f"{name}.safetensors")
        save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                  str(tmp / f"{name}.safetensors"))
    meta = {"format": "varrl-nano/1", "tokenizer": to_dict(cfg.tokenizer), "model": to_dict(cfg.model),
            "prompts": PromptForm.from_synth(cfg.data).to_dict(),  # the form load_policy warns outside of
            "trained": {"tokenizer_steps": load_state(tok_ckpt)["step"], "model_steps": load_state(model_ckpt)["step"],
                        "data": to_dict(cfg.data), "init": _init_history(cfg.model_train.init_from)}}
    atomic_write_text(tmp / "config.json", json.dumps(meta, indent=1))
    write_manifest(tmp)  # last: it vouches for the finished folder
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest
