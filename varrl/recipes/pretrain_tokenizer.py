"""Stage 1 of pretraining: the multi-scale VQ tokenizer, trained on synthetic renderings."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from varrl.checkpoint import latest_checkpoint, load_into, load_object, load_state, load_tensors, save_checkpoint
from varrl.data.synth import SynthGenerator
from varrl.device import resolve_device
from varrl.models.tokenizer import VQTokenizer
from varrl.recipes.common import MetricLog, Timer, cosine_lr, synth_batch
from varrl.textmetrics import word_hits
from varrl.viz import image_grid, to_uint8


def reconstruction_word_acc(tok: VQTokenizer, gen: SynthGenerator, n: int, ocr) -> float:
    """OCR word accuracy on tokenizer reconstructions of n held-out samples."""
    img, samples = synth_batch(gen, 0, n)
    img = img.to(next(tok.parameters()).device)
    with torch.no_grad():
        rec = tok.decode(tok.encode(img))
    reads = ocr.read(list(to_uint8(rec)))
    hits = sum(word_hits(s.words, [w.text for w in r]) for s, r in zip(samples, reads))
    return hits / max(1, sum(len(s.words) for s in samples))


def train_tokenizer(cfg, run_dir: Path, resume_ckpt: Path | None, ocr=None) -> VQTokenizer:
    """cfg: PretrainConfig. Writes run_dir/tokenizer/{checkpoints,samples,metrics.jsonl}."""
    tc = cfg.tokenizer_train
    out = run_dir / "tokenizer"
    (out / "samples").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.run.seed)
    dev = resolve_device(cfg.device)
    tok = VQTokenizer(cfg.tokenizer).to(dev)  # before the optimizer, so its state lives there too
    opt = torch.optim.AdamW(tok.parameters(), lr=tc.lr, betas=(0.9, 0.95), weight_decay=tc.weight_decay)
    start = 0
    if tc.init_from and resume_ckpt is None:
        src = Path(tc.init_from) / "tokenizer.safetensors"
        load_into(tok, load_tensors(src), str(src))
    if resume_ckpt is None and not tc.init_from and tc.pca_images:
        # Start from the linear (PCA) autoencoder of image patches: legible from the first step.
        pca_img, _ = synth_batch(SynthGenerator(cfg.tokenizer_data, "train", cfg.run.seed + 1), 0, tc.pca_images)
        kept = tok.init_pca_(pca_img.to(dev))
        tqdm.write(f"tokenizer: PCA initialisation keeps {kept:.3f} of the patch variance")
    if resume_ckpt is not None:
        tok.load_state_dict(load_tensors(resume_ckpt / "tokenizer.safetensors"))
        opt.load_state_dict(load_object(resume_ckpt / "optimizer.pt"))
        start = load_state(resume_ckpt)["step"]
    train_gen = SynthGenerator(cfg.tokenizer_data, "train", cfg.run.seed)
    held_gen = SynthGenerator(cfg.tokenizer_data, "heldout", cfg.run.seed)
    log = MetricLog(out / "metrics.jsonl", start)
    timer = Timer()
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc="tokenizer", dynamic_ncols=True)
    for step in bar:
        lr = cosine_lr(step, tc.steps, tc.lr, tc.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        img, samples = synth_batch(train_gen, step * tc.batch_size, tc.batch_size)
        img = img.to(dev)
        f = tok.encoder(img * 2 - 1)
        f_hat, idx_list, vq_loss = tok.quantizer(f)
        rec = (tok.decoder(f_hat) + 1) / 2
        w = text_weight_map(samples, img.shape[-1], tc.text_weight).to(dev)
        err = rec - img
        l1 = (err.abs() * w).mean() / w.mean()
        l2 = (err.pow(2) * w).mean() / w.mean()
        loss = l1 + tc.l2_weight * l2 + tc.vq_weight * vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), tc.grad_clip)
        opt.step()
        if tc.restart_every and (step + 1) % tc.restart_every == 0 and step + 1 < tc.steps * 0.9:
            # Codes that fell out of use move onto this batch's residuals: keeps the codebook in
            # use. Decided from checkpointed state only (EMA counts, the step), so resume is exact.
            g = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step)
            n_dead = tok.quantizer.restart_dead_codes_(tc.dead_code_threshold, g)
            log.write(step + 1, {"tok/dead_codes": n_dead})
        if (step + 1) % tc.log_every == 0:
            dt = timer.lap() / tc.log_every
            metrics = {"tok/loss": loss.item(), "tok/l1": l1.item(), "tok/mse": l2.item(),
                       "tok/vq": vq_loss.item(), "tok/lr": lr, "perf/step_s": dt}
            log.write(step + 1, metrics)
            bar.set_postfix(l1=f"{l1.item():.4f}", vq=f"{vq_loss.item():.4f}", s_per_step=f"{dt:.2f}")
        last = step + 1 == tc.steps
        if (step + 1) % tc.sample_every == 0 or last:
            save_recon_sheet(tok, held_gen, out / "samples" / f"step_{step + 1:06d}.png")
            if ocr is not None:
                acc = reconstruction_word_acc(tok, held_gen, tc.ocr_eval_images, ocr)
                log.write(step + 1, {"tok/recon_word_acc": acc})
                tqdm.write(f"tokenizer step {step + 1}: OCR word accuracy on reconstructions {acc:.3f}")
        if (step + 1) % tc.save_every == 0 or last:
            save_checkpoint(out / "checkpoints", step + 1, {"tokenizer": tok.state_dict()},
                            {"step": step + 1, "stage": "tokenizer"}, {"optimizer": opt.state_dict()})
    if latest_checkpoint(out / "checkpoints") is None:  # zero steps asked: keep what we started from
        save_checkpoint(out / "checkpoints", start, {"tokenizer": tok.state_dict()},
                        {"step": start, "stage": "tokenizer"}, {"optimizer": opt.state_dict()})
    return tok


def text_weight_map(samples, size: int, weight: float) -> torch.Tensor:
    """[B, 1, H, W] pixel weights: `weight` inside word boxes, 1 elsewhere. Text is a small share of
    the pixels but all that OCR needs, so the reconstruction loss leans on it."""
    w = torch.ones(len(samples), 1, size, size)
    for i, s in enumerate(samples):
        for x0, y0, x1, y1 in s.boxes:
            w[i, :, y0:y1, x0:x1] = weight
    return w


def save_recon_sheet(tok: VQTokenizer, gen: SynthGenerator, path: Path, n: int = 8) -> None:
    """Originals on the top row, reconstructions below."""
    img, _ = synth_batch(gen, 0, n)
    with torch.no_grad():
        rec = tok.decode(tok.encode(img.to(next(tok.parameters()).device)))
    image_grid(list(to_uint8(img)) + list(to_uint8(rec)), cols=n).save(path)
