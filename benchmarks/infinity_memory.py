"""Memory per GPU of RL on the Infinity presets, computed on PyTorch's meta device (nothing is
allocated, nothing is downloaded): parameter, gradient and AdamW bytes from the real modules, and
the activations the update's backward keeps, recorded by autograd's saved-tensor hooks while the
real teacher-forced pass runs on meta tensors at the configured micro-batch.

    python benchmarks/infinity_memory.py                       # the table of docs/infinity.md
    python benchmarks/infinity_memory.py --preset infinity_2b --schedule 1M --micro-batch 2 --ckpt
    python benchmarks/infinity_memory.py --preset infinity_8b --ckpt --fsdp 8   # train.fsdp over 8 GPUs
    python benchmarks/infinity_memory.py --preset infinity_8b --ckpt --lora 16  # train.lora.rank=16

Columns (GiB per GPU, one process per GPU, data parallel; with --fsdp N sharded over N GPUs):
  weights    the policy's fp32 master weights (FSDP: a 1/N shard, plus the root's and two blocks'
             full weights, gathered while they run: the block in use and the next one)
  ref        the frozen reference for the KL term, as `frozen_reference` stores it under bf16
             autocast: matmul weights bf16, the rest fp32 (FSDP: a 1/N shard)
  grads      fp32 gradients of the trained weights (FSDP: a 1/N shard)
  adamw      AdamW's two fp32 moments (FSDP: a 1/N shard)
  text+vae   the frozen T5-XL encoder (bf16) and BSQ tokenizer (fp32) held for rollouts
  act        what the update's backward keeps for one micro-batch, recorded while the policy's
             scale-by-scale re-scoring pass runs (floats counted as bf16 under autocast; with
             gradient checkpointing: every block's inputs and KV caches plus one block's own
             activations at the last scale while it is recomputed)
  kv         the rollout's KV caches for one micro-batch of images, both CFG branches, bf16
  total      weights + ref + grads + adamw + text+vae + the larger of act and kv (not held together)
With --lora R (train.lora.rank=R on the model's default targets) the weights are the frozen base
(fp32, as full fine-tuning keeps them), there is no ref (the KL reference is the base with the
adapters off), and grads and adamw cover the adapters only; act is counted as for full
fine-tuning (an upper bound: a frozen layer's backward needs no copy of its input).
The meta device runs PyTorch's math attention, which keeps the [B, heads, l_t, L_t] attention
probabilities for the backward; the fused attention kernels on a GPU keep O(L) instead, so `act`
is an upper bound.
"""

from __future__ import annotations

import argparse

import torch

from varrl.models.infinity.schedules import infinity_schedule
from varrl.models.infinity.transformer import Infinity, infinity_preset

GiB = 1024**3
# google/flan-t5-xl's encoder shape (its config.json): the text encoder every Infinity model reads.
T5_XL = dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
             feed_forward_proj="gated-gelu", is_encoder_decoder=False)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def t5_encoder_params() -> int | None:
    try:
        from transformers import T5Config, T5EncoderModel
    except ImportError:
        return None
    with torch.device("meta"):
        return count_params(T5EncoderModel(T5Config(**T5_XL)))


def vae_params(bits: int) -> int | None:
    try:
        from varrl.models.infinity.bsq import BSQVAE, PRESETS
    except ImportError:
        return None
    name = "infinity_vae_d56_f8_14_patchify" if bits == 56 else "infinity_vae_d32reg"
    with torch.device("meta"):
        return count_params(BSQVAE(PRESETS[name]))


def activation_bytes(model: Infinity, grids, rope_hw, B: int, low_precision: bool, checkpointing: bool) -> int:
    """Bytes autograd keeps for one re-scoring pass of B rows, run as the policy runs it (scale by
    scale with KV caches, conditional branch) on the meta device."""
    C, T, depth = model.cfg.width, 32, model.cfg.depth  # a prompt of 32 T5 tokens
    params = {id(p) for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(base) not in params and id(t) not in params:
            size = t.numel() * (2 if (low_precision and t.is_floating_point()) else t.element_size())
            seen[id(base)] = max(seen.get(id(base), 0), size)
        return t

    with torch.device("meta"):
        feats, mask = torch.randn(B, T, model.cfg.text_dim), torch.ones(B, T, dtype=torch.bool)
        inputs = [torch.randn(B, h * w, model.cfg.bits) for h, w in grids[1:]]
    lay, caches = model.layout(grids, rope_hw, "meta"), model.new_cache()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ctx = model.encode_text(feats, mask)
        last = 0
        for k in range(len(grids)):
            x = model.embed(ctx, None if k == 0 else inputs[k - 1], lay, k, k + 1)
            if checkpointing and k == len(grids) - 1:  # what one block's recomputation holds at its peak
                last = sum(seen.values())
                model.run_blocks(x, ctx, lay, k, k + 1, 0, 1, caches[:1] + model.new_cache()[1:])
                last = sum(seen.values()) - last
                break
            model.logits(model.run_blocks(x, ctx, lay, k, k + 1, 0, depth, caches), ctx)
    if not checkpointing:
        return sum(seen.values())
    L = sum(h * w for h, w in grids)
    kv = depth * 2 * B * L * C * (2 if low_precision else 4)  # every block's cached keys and values
    return depth * B * L * C * 4 + kv + last  # block inputs (fp32 residual) + caches + one block


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def adapter_params(model: torch.nn.Module, rank: int) -> int:
    """Parameters of rank-`rank` LoRA adapters on the model's default targets: r (in + out) per layer."""
    from varrl.policy.lora import resolve_targets

    layers = dict(model.named_modules())
    return sum(rank * (layers[n].in_features + layers[n].out_features) for n in resolve_targets(model, None))


def setup_row(preset: str, schedule: str, micro_batch: int, checkpointing: bool, fsdp: int = 1,
              lora: int = 0, kl: bool = True) -> dict:
    with torch.device("meta"):
        model = Infinity(infinity_preset(preset))
        ref = Infinity(infinity_preset(preset))
    ref.store_matmuls_in_(torch.bfloat16)  # what frozen_reference keeps under bf16 autocast
    sched = infinity_schedule(schedule)
    n = count_params(model)
    t5, vae = t5_encoder_params(), vae_params(model.cfg.bits)
    act = activation_bytes(model, sched.grids, sched.final_grid, micro_batch, True, checkpointing)
    L, C = sched.total_tokens, model.cfg.width
    kv = 2 * 2 * micro_batch * L * C * 2 * model.cfg.depth  # K and V, 2 branches, bf16, every block
    weights = n * 4 / fsdp
    if fsdp > 1:  # gathered while running: the root's own weights and two blocks
        block = param_bytes(model.block_list[0])
        weights += (n * 4 - block * model.cfg.depth) + 2 * block
    trained = adapter_params(model, lora) if lora else n
    row = {"setup": f"{preset} {schedule} mb={micro_batch}{' ckpt' if checkpointing else ''}"
                    f"{f' fsdp={fsdp}' if fsdp > 1 else ''}{f' lora={lora}' if lora else ''}",
           "weights": (weights + (trained * 4 / fsdp if lora else 0)) / GiB,  # with LoRA: base + adapters
           "ref": (param_bytes(ref) / fsdp if kl and not lora else 0) / GiB,
           "grads": trained * 4 / fsdp / GiB, "adamw": trained * 8 / fsdp / GiB,
           "text+vae": ((t5 or 0) * 2 + (vae or 0) * 4) / GiB, "act": act / GiB, "kv": kv / GiB}
    # The rollout's KV caches and the update's activations are never held at the same time.
    row["total"] = sum(row[k] for k in ("weights", "ref", "grads", "adamw", "text+vae")) + max(row["act"], row["kv"])
    row["params_B"] = n / 1e9
    return row


SETUPS = [("infinity_125m", "0.06M", 16, False), ("infinity_2b", "0.06M", 8, False),
          ("infinity_2b", "1M", 1, True), ("infinity_2b", "1M", 2, True), ("infinity_2b", "1M", 2, True, 8),
          ("infinity_8b", "1M", 1, True), ("infinity_8b", "1M", 1, True, 8),
          ("infinity_2b", "1M", 2, True, 1, 16), ("infinity_8b", "1M", 1, True, 1, 16)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset")
    ap.add_argument("--schedule", default="1M")
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--ckpt", action="store_true", help="gradient checkpointing")
    ap.add_argument("--fsdp", type=int, default=1, help="train.fsdp over this many GPUs (1: no sharding)")
    ap.add_argument("--lora", type=int, default=0, help="train.lora.rank (0: full fine-tuning)")
    args = ap.parse_args()
    setups = SETUPS if args.preset is None else [(args.preset, args.schedule, args.micro_batch, args.ckpt, args.fsdp,
                                                  args.lora)]
    cols = ["weights", "ref", "grads", "adamw", "text+vae", "act", "kv", "total"]
    print("| setup | params | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for s in setups:
        r = setup_row(*s)
        print(f"| {r['setup']} | {r['params_B']:.2f} B | " + " | ".join(f"{r[c]:.1f}" for c in cols) + " |")
    print("GiB per GPU; AdamW, bf16 autocast and a frozen reference for the KL term (with LoRA: the base itself).")


if __name__ == "__main__":
    main()
