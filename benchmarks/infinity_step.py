"""One RL step of `varrl train` on random weights of an Infinity preset and schedule: rollout /
reward / update seconds, sampled tokens per second and peak GPU memory. Nothing is downloaded:
the transformer, the BSQ tokenizer and a T5 encoder of Flan-T5-XL's width are random, written in
the released layouts to a temporary folder and loaded as `varrl train` loads the real files.

    python benchmarks/infinity_step.py                                   # CPU: 125M at 256 px
    python benchmarks/infinity_step.py --preset infinity_2b --schedule 1M --t5-layers 24 \\
        policy.device=cuda policy.dtype=bfloat16 train.micro_batch=2 train.grad_checkpointing=true

Any `key=value` overrides configs/infinity_125m_text.yaml (batch shape, VMR, sampler, ...). The
default batch is 1 prompt x 2 samples with plain GRPO, so that a CPU finishes in minutes.
"""

from __future__ import annotations

import argparse
import string
import tempfile
import time
from pathlib import Path

import torch

from varrl.config import load_config
from varrl.models.infinity.bsq import BSQVAE, PRESETS, save_bsq_vae
from varrl.models.infinity.files import save_infinity
from varrl.models.infinity.transformer import Infinity, infinity_preset
from varrl.trainer.config import TrainRunConfig, apply_method_preset
from varrl.trainer.dist import DistInfo
from varrl.trainer.loop import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "infinity_125m_text.yaml"


def write_random_t5(folder: Path, layers: int) -> Path:
    """A T5 encoder of Flan-T5-XL's width (2048) with `layers` layers, and a small offline tokenizer."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in string.printable[:94]]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(str(folder))
    cfg = T5Config(vocab_size=len(vocab), d_model=2048, d_kv=64, d_ff=5120, num_layers=layers, num_heads=32,
                   feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5EncoderModel(cfg).save_pretrained(str(folder))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="infinity_125m", choices=["infinity_125m", "infinity_2b", "infinity_8b"])
    ap.add_argument("--schedule", default="0.06M")
    ap.add_argument("--t5-layers", type=int, default=2, help="T5 encoder layers (Flan-T5-XL: 24)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Infinity(infinity_preset(args.preset))
        save_infinity(model.to(torch.bfloat16), tmp / "infinity.safetensors")  # bf16 on disk: half the bytes
        del model
        vae_cfg = PRESETS["infinity_8b" if args.preset == "infinity_8b" else "infinity_2b"]
        save_bsq_vae(BSQVAE(vae_cfg), tmp / "vae.pth")
        write_random_t5(tmp / "t5", args.t5_layers)
        overrides = [f"policy.path={tmp / 'infinity.safetensors'}", f"policy.vae={tmp / 'vae.pth'}",
                     f"policy.text_encoder={tmp / 't5'}", f"policy.schedule={args.schedule}", "policy.dtype=float32",
                     "policy.device=cpu", "rl.method=grpo", "train.prompts_per_step=1", "train.group_size=2",
                     "train.micro_batch=2", "train.eval_prompts=1", f"run.dir={tmp / 'runs'}", *args.overrides]
        cfg: TrainRunConfig = load_config(TrainRunConfig, CONFIG, overrides, apply_method_preset)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, tmp / "runs" / "bench", DistInfo(), resume=False)
        load_s = time.perf_counter() - t0
        sched, dev = trainer.policy.schedule, trainer.policy.device
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        print(f"{args.preset} {args.schedule} ({sched.num_steps} grids, {sched.total_tokens} tokens per image, "
              f"{sched.image_size}x{sched.width_px} px) on {dev} "
              f"({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
              f"dtype {cfg.policy.dtype}, micro-batch {cfg.train.micro_batch}, checkpointing "
              f"{cfg.train.grad_checkpointing}; loaded in {load_s:.1f} s")
        for s in range(args.steps):
            m = trainer.step(s)
            images = cfg.train.prompts_per_step * cfg.train.group_size
            tok_s = images * sched.total_tokens / max(m["perf/rollout_s"], 1e-9)
            line = (f"step {s + 1}: rollout {m['perf/rollout_s']:.2f} s, reward {m['perf/reward_s']:.2f} s, update "
                    f"{m['perf/update_s']:.2f} s; {tok_s:,.0f} sampled tokens/s, {m['perf/images_per_s']:.2f} img/s")
            # Re-scoring equals sampling: the update's first teacher-forced pass against the log-probs the
            # sampler stored (float rounding: about 6e-5 for the nano model in fp32 on a CPU, rl_step.py).
            line += f"; re-scoring vs sampling: max |d log p| {m['policy/logprob_drift']:.2e}"
            if dev.type == "cuda":
                line += f"; peak GPU memory {torch.cuda.max_memory_allocated(dev) / 1024**3:.1f} GiB"
            print(line)
        trainer.reward.close()


if __name__ == "__main__":
    main()
