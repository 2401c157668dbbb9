"""Does varrl's Infinity compute what FoundationVision's official code computes? fp32, CPU, random weights.

    python benchmarks/infinity_parity.py --official /path/to/Infinity

Builds the official tokenizer (`vae_model`) and transformer (`Infinity`, with the arguments of
tools/run_infinity.py's `load_infinity`) at a small size with random weights, saves them as the
released files are laid out (`{"vae": state_dict}` and a flat transformer state dict) plus a tiny
random T5 folder, loads those strictly with `varrl.load_policy`, and compares:
  - schedules and 2-D RoPE tables of every aspect-ratio template;
  - the tokenizer: encoder latents, multi-scale bits (official `BitwiseSelfCorrection.flip_requant`
    without flips), the transformer's teacher-forcing inputs, summed codes and decoded images
    (official `decode_from_indices`), with and without the 2x2 spatial patchify;
  - teacher-forced bit logits (official `forward`) for two prompts of different T5 lengths: the
    official packs the text (cu_seqlens), varrl pads it with a mask;
  - the sampler (official `autoregressive_infer_cfg` vs `policy.rollout`, same seed): the drawn
    bits, and, fed the official bits, the guided tempered logits of every scale, the log-probs of the
    truncated distribution and the decoded image (uint8, as the official returns it).
The official cross-attention runs in bf16 on a GPU (flash-attn has no fp32 kernel); by default it
is run fp32 here (`no_bf16_casts`), `--as-released` keeps its bf16 casts (expect ~1e-2 then).

Tolerance: max |ours - official| <= 1e-5 * max(1, max |official|) per figure. Both sides are fp32
and run the same operations in a different order (SDPA vs an explicit softmax, padded vs packed
text, fused-by-hand biases), so each op differs by a few ulps (1.2e-7 relative) and a handful of
blocks amplify that; a real mistake (a wrong scale, a missing term, a shifted position) shows as
1e-2 or more. Bits and images are compared exactly (count of differing entries).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from argparse import Namespace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from infinity_parity_env import (  # noqa: E402
    SamplerTap,
    install_stubs,
    no_bf16_casts,
    official_infinity,
    official_vae,
    quiet,
)

ROWS: list[tuple] = []
TOL = 1e-5


def close(what: str, ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double(), ref.double()
    if ours.shape != ref.shape:
        raise SystemExit(f"{what}: shapes differ, ours {tuple(ours.shape)} vs official {tuple(ref.shape)}")
    finite = torch.isfinite(ref)
    if not torch.equal(finite, torch.isfinite(ours)) or not torch.equal(ours[~finite], ref[~finite]):
        ROWS.append((what, "inf pattern differs", "", "FAIL"))
        return math.inf
    diff = (ours - ref)[finite].abs().max().item() if finite.any() else 0.0
    scale = max(1.0, ref[finite].abs().max().item() if finite.any() else 0.0)
    ROWS.append((what, f"{diff:.2e}", f"{scale:.3g}", "ok" if diff <= TOL * scale else "FAIL"))
    return diff


def equal(what: str, ours: torch.Tensor, ref: torch.Tensor) -> int:
    bad = int((ours.long() != ref.long()).sum())
    ROWS.append((what, f"{bad} of {ref.numel()} differ", "", "ok" if bad == 0 else "FAIL"))
    return bad


# -- schedules and RoPE ---------------------------------------------------------------------------------
def compare_tables(model, head_dim: int) -> None:
    from infinity.utils.dynamic_resolution import dynamic_resolution_h_w

    from varrl.models.infinity.blocks import rope_angles
    from varrl.models.infinity.schedules import BUDGET_STEPS, infinity_grids, rope_grid

    bad_grids, rope_diff, n = 0, 0.0, 0
    for ratio, per_pn in dynamic_resolution_h_w.items():
        for pn, entry in per_pn.items():
            ref = [tuple(s[1:]) for s in entry["scales"]]
            ours = list(infinity_grids(pn, ratio)) if pn in BUDGET_STEPS else None
            bad_grids += ours != ref
            n += 1
        full = [tuple(s[1:]) for s in per_pn["1M"]["scales"]]
        ang = rope_angles(head_dim, full, rope_grid(ratio))
        table = model.rope2d_freqs_grid[str(tuple((1, h, w) for h, w in full))][:, 0, 0, 0, : ang.shape[0]]
        rope_diff = max(rope_diff, (table[0] - ang.cos()).abs().max().item(), (table[1] - ang.sin()).abs().max().item())
    ROWS.append((f"schedules: {n} (template, budget) pairs", f"{bad_grids} differ", "",
                 "ok" if not bad_grids else "FAIL"))
    ROWS.append(("RoPE cos/sin, every template's 1M schedule", f"{rope_diff:.2e}", "1",
                 "ok" if rope_diff <= TOL else "FAIL"))


def compare_truncation(seed: int) -> None:
    """top-k / top-p over the 2 values of a bit on random logits, exact ties and probabilities at
    the top-p edge: which values survive (official: the sampling function, which truncates in place)."""
    from infinity.models.infinity import sample_with_top_k_top_p_also_inplace_modifying_logits_ as official_sample

    from varrl.policy.infinity_sampler import truncate_bits

    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(1, 4000, 2, generator=g) * 3
    ties = torch.full((1, 16, 2), 0.25)
    edge = torch.tensor([[[0.0, math.log(0.97 / 0.03)], [math.log(0.9 / 0.1), 0.0]]])  # p_low = 1 - top_p
    bad, n = 0, 0
    for logits in (rand, ties, edge):
        for top_k, top_p in ((0, 0.97), (0, 0.9), (0, 0.5), (0, 0.3), (1, 0.0), (2, 0.97), (1, 0.97)):
            ref = logits.clone()
            official_sample(ref, top_k=top_k, top_p=top_p, rng=torch.Generator().manual_seed(0))
            ours = truncate_bits(logits.clone().unsqueeze(1), top_k, top_p).squeeze(1)
            bad += int((torch.isinf(ours) != torch.isinf(ref)).sum())
            n += ref.numel()
    ROWS.append(("top-k / top-p per bit: removed values (random, tied, edge)", f"{bad} of {n} differ", "",
                 "ok" if bad == 0 else "FAIL"))


# -- tokenizer -------------------------------------------------------------------------------------------
def compare_tokenizer(tag: str, off_vae, vae, grids, seed: int):
    """Returns the official teacher-forcing inputs [B, L-1, bits] and token bits of a random image."""
    from infinity.models.bitwise_self_correction import BitwiseSelfCorrection

    from varrl.models.infinity import bsq_quant as Q

    p = vae.patchify
    vae_grids = vae.latent_grids(grids)
    sched3 = [(1, h, w) for h, w in vae_grids]
    H, W = grids[-1][0] * vae.downsample, grids[-1][1] * vae.downsample
    img = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(seed))
    img = F.avg_pool2d(img, 5, 1, 2)  # smoother than noise, so the coarse scales carry signal
    with torch.no_grad():
        h_ref = off_vae.encode_for_raw_features(img + img - 1, sched3)[0]
        close(f"{tag} tokenizer: encoder latent", vae.encode_latent(img), h_ref)
        bsc = BitwiseSelfCorrection(off_vae, Namespace(noise_apply_layers=0, noise_apply_requant=0,
                                                       noise_apply_strength=0, apply_spatial_patchify=int(p),
                                                       debug_bsc=0))
        x_ref, bits_ref = bsc.flip_requant(sched3, img, h_ref, "cpu")
        cells = Q.multiscale_bits(h_ref, vae_grids)
        ours_bits = [Q.patchify_bits(b) if p else b.reshape(b.shape[0], -1, b.shape[-1]) for b in cells]
        equal(f"{tag} tokenizer: bits of the official latent", torch.cat(ours_bits, 1), torch.cat(bits_ref, 1))
        equal(f"{tag} tokenizer: bits end to end (encode_bits)", torch.cat(vae.encode_bits(img, grids), 1),
              torch.cat(bits_ref, 1))
        inputs = [x.flatten(2).transpose(1, 2) for x in vae.next_inputs(bits_ref, grids)]
        close(f"{tag} tokenizer: teacher-forcing inputs", torch.cat(inputs, 1), x_ref)
        cell_ref = [Q.unpatchify_bits(b, *g) if p else b.reshape(b.shape[0], *g, -1) for b, g in zip(bits_ref, grids)]
        summed_ref, recon_ref = off_vae.decode_from_indices([c.unsqueeze(1) for c in cell_ref], sched3, "bit_label")
        close(f"{tag} tokenizer: summed codes", vae.summed_codes(bits_ref, grids), summed_ref.squeeze(-3))
        close(f"{tag} tokenizer: decoded image", vae.decode_bits(bits_ref, grids), (recon_ref + 1) / 2)
    return x_ref, bits_ref


# -- text ----------------------------------------------------------------------------------------------
def official_label(policy, prompts):
    """The official (kv_compact, lens, cu_seqlens_k, max_seqlen_k) of the prompts' T5 features."""
    from varrl.models.infinity.text import encode_prompts

    packed, lens, cu = encode_prompts(policy.text_tokenizer, policy.text_encoder, prompts,
                                      max_len=policy.model.cfg.text_maxlen)
    return packed, lens.tolist(), cu, int(lens.max())


def compare_text(tool, policy, prompts) -> None:
    """Official `encode_prompt` (tools/run_infinity.py; one prompt, padded to 512) vs ours."""
    from infinity_parity_env import StayOnCPU

    from varrl.models.infinity.text import encode_prompts

    for i, prompt in enumerate(prompts):
        with StayOnCPU(), quiet():
            kv, lens, cu, longest = tool.encode_prompt(policy.text_tokenizer, policy.text_encoder, prompt)
        packed, lens_ours, cu_ours = encode_prompts(policy.text_tokenizer, policy.text_encoder, [prompt])
        close(f"T5 features of prompt {i + 1} ({lens[0]} tokens), packed", packed, kv)
        equal(f"T5 lens and cu_seqlens of prompt {i + 1}", torch.cat([lens_ours, cu_ours.long()]),
              torch.cat([torch.tensor(lens), cu.long()]))


def compare_teacher(tag: str, off, policy, prompts, x_ref, as_released: bool) -> None:
    from varrl.models.infinity.transformer import gather_context

    grids = policy.schedule.grids
    label = official_label(policy, prompts)
    with torch.no_grad(), no_bf16_casts(not as_released):
        ref = off(tuple(t.clone() if torch.is_tensor(t) else t for t in label), x_ref, [(1, h, w) for h, w in grids])
    m = policy.model
    with torch.no_grad():
        feats = [policy.text_features(p) for p in prompts]
        per_prompt = gather_context(m.encode_texts(feats), list(range(len(prompts))))
        close(f"{tag} teacher forcing: logits, policy context", m(per_prompt, x_ref, grids, policy.rope_hw), ref)
        T = max(f.shape[1] for f in feats)
        padded = torch.cat([F.pad(f, (0, 0, 0, T - f.shape[1])) for f in feats])
        mask = torch.arange(T)[None] < torch.tensor([f.shape[1] for f in feats])[:, None]
        close(f"{tag} teacher forcing: logits, padded batch", m(m.encode_text(padded, mask), x_ref, grids,
                                                                  policy.rope_hw), ref)


# -- sampler -------------------------------------------------------------------------------------------
def compare_sampler(tag: str, off, off_vae, policy, prompts, sampler, official_kw: dict, seed: int,
                    as_released: bool) -> None:
    from varrl.policy.infinity_sampler import bit_view, token_logprobs

    grids, T, d = policy.schedule.grids, policy.schedule.num_steps, policy.bits_per_token
    cfg_list = [1 + sampler.guidance(t, T) for t in range(T)]
    tau = [sampler.temperature_at(t, policy.schedule) for t in range(T)]
    label = official_label(policy, prompts)
    with torch.no_grad(), no_bf16_casts(not as_released), SamplerTap() as tap:
        _, _, img_ref = off.autoregressive_infer_cfg(vae=off_vae, scale_schedule=[(1, h, w) for h, w in grids],
                                                     label_B_or_BLT=label, B=len(prompts), g_seed=seed,
                                                     cfg_list=cfg_list, tau_list=tau, vae_type=off_vae.codebook_dim,
                                                     ret_img=True, inference_mode=True, returns_vemb=1, **official_kw)
    bits_ref = [b.reshape(len(prompts), -1, d) for b in tap.bits]
    traj = policy.rollout(prompts, 1, sampler, generator=torch.Generator().manual_seed(seed))
    equal(f"{tag}: bits drawn with the same seed", torch.cat(policy.bits(traj), 1), torch.cat(bits_ref, 1))
    fed = policy.trajectory_from_tokens(prompts, bits_ref, sampler)
    with torch.no_grad():
        outs = policy.teacher_logits(fed)
        raw = torch.cat([policy._distribution(o, cfg_list[k], sampler, tau[k])[0] for k, o in enumerate(outs)], 1)
        close(f"{tag}: guided logits / tau, fed the official bits", raw,
              torch.cat([bit_view(r.reshape(len(prompts), -1, 2 * d)) for r in tap.raw], 1))
        lp_ref = torch.cat([token_logprobs(bit_view(c.reshape(len(prompts), -1, 2 * d)), b)
                            for c, b in zip(tap.cut, bits_ref)], 1)
        close(f"{tag}: token log-probs after top-k/top-p", torch.cat(fed.logprobs, 1), lp_ref)
        img = policy.decode(fed).permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(dims=(3,))
    bad = int((img != img_ref).sum())
    ROWS.append((f"{tag}: image (uint8, as the official returns it)", f"{bad} of {img.numel()} differ, max "
                 f"{(img.int() - img_ref.int()).abs().max().item()} levels", "", "ok" if bad == 0 else "FAIL"))


def run_variant(args, tmp: Path, patchify: bool, as_released: bool, tool) -> None:
    import varrl
    from varrl.models.infinity.bsq import canonical_key
    from varrl.policy.sampler import SamplerConfig

    tag = "patchify" if patchify else "plain"
    d = args.patchify_bits if patchify else args.bits
    off_vae = official_vae(d, patchify, args.vae_ch, 1, args.seed)
    off = official_infinity(off_vae, depth=args.depth, width=args.width, heads=args.heads, chunks=args.chunks,
                            text_dim=args.text_dim, text_maxlen=args.text_maxlen, patchify=patchify,
                            pn=args.schedule, seed=args.seed)
    if not patchify:
        compare_tables(off, args.width // args.heads)
        compare_truncation(args.seed)
    vae_file, model_file = tmp / f"vae_{tag}.pth", tmp / f"infinity_{tag}.pth"
    torch.save({"vae": {canonical_key(k): v for k, v in off_vae.state_dict().items()}}, vae_file)
    torch.save(off.state_dict(), model_file)
    policy = varrl.load_policy(model_file, vae=vae_file, text_encoder=tmp / "t5", schedule=args.schedule,
                               aspect_ratio=args.aspect_ratio)
    x_ref, _ = compare_tokenizer(tag, off_vae, policy.vae, policy.schedule.grids, args.seed)
    prompts = ["a red sign with the text OPEN", "a cat"]
    if not patchify:
        compare_text(tool, policy, prompts)
    compare_teacher(tag, off, policy, prompts, x_ref, as_released)
    cases = [("sampler cfg 3 on logits, top-p 0.97 (the tool's defaults)",
              SamplerConfig(cfg=2.0, cfg_schedule="constant", top_p=0.97, logprob_mode="sampling"),
              dict(top_k=900, top_p=0.97, cfg_insertion_layer=[0]))]
    if not patchify:
        cases += [("sampler linear cfg on logits, tau 0.5, top-k 1",
                   SamplerConfig(cfg=3.0, cfg_schedule="linear", top_k=1, temperature=0.5, logprob_mode="sampling"),
                   dict(top_k=1, top_p=0.0, cfg_insertion_layer=[0])),
                  (f"sampler cfg 4 on hidden states after block depth-{args.insertion}, tau 0.5, top-p 0.9",
                   SamplerConfig(cfg=3.0, cfg_schedule="constant", top_p=0.9, temperature=0.5,
                                 cfg_insertion_layer=-args.insertion, logprob_mode="sampling"),
                   dict(top_k=0, top_p=0.9, cfg_insertion_layer=[-args.insertion])),
                  (f"sampler linear cfg on hidden states after block depth-{args.insertion}, top-p 0.97",
                   SamplerConfig(cfg=2.0, cfg_schedule="linear", top_p=0.97, cfg_insertion_layer=-args.insertion,
                                 logprob_mode="sampling"),
                   dict(top_k=0, top_p=0.97, cfg_insertion_layer=[-args.insertion]))]
    for i, (name, sampler, kw) in enumerate(cases):
        compare_sampler(f"{tag} {name}", off, off_vae, policy, prompts, sampler, kw, args.seed + i, as_released)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, type=Path, help="a checkout of FoundationVision/Infinity")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=2, help="block chunks (the official sampler needs >= 2)")
    ap.add_argument("--text-dim", type=int, default=256, help="T5 width (the text pooling has text_dim/128 heads)")
    ap.add_argument("--text-maxlen", type=int, default=64)
    ap.add_argument("--bits", type=int, default=16, help="codebook bits d of the plain tokenizer")
    ap.add_argument("--patchify-bits", type=int, default=8, help="d of the patchify tokenizer (4d bits per token)")
    ap.add_argument("--vae-ch", type=int, default=32, help="tokenizer base width (released: 128)")
    ap.add_argument("--insertion", type=int, default=2, help="hidden-state guidance after block depth-k")
    ap.add_argument("--schedule", default="0.06M")
    ap.add_argument("--aspect-ratio", type=float, default=1.0, help="height / width (nearest released template)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-patchify", action="store_true", help="skip the 2x2 spatial patchify variant")
    ap.add_argument("--as-released", action="store_true",
                    help="keep the official bf16 casts around its cross-attention (as on a GPU)")
    args = ap.parse_args()
    if not (args.official / "infinity" / "models" / "infinity.py").is_file():
        raise SystemExit(f"{args.official} is not a checkout of FoundationVision/Infinity")
    tool = install_stubs(args.official.resolve())
    torch.set_grad_enabled(False)
    from tinyinfinity_vae import write_tiny_t5

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_t5(Path(tmp) / "t5", seed=args.seed, width=args.text_dim)
        for patchify in (False,) if args.no_patchify else (False, True):
            run_variant(args, Path(tmp), patchify, args.as_released, tool)
    w = max(len(r[0]) for r in ROWS)
    print(f"{'check':<{w}}  {'max |ours - official|':<28}  {'scale':>6}  result")
    for what, fig, scale, res in ROWS:
        print(f"{what:<{w}}  {fig:<28}  {scale:>6}  {res}")
    fails = sum(r[3] != "ok" for r in ROWS)
    print(f"\n{len(ROWS) - fails} of {len(ROWS)} checks within tolerance (|diff| <= {TOL:g} x max(1, |official|); "
          "bits and images exactly)")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
