"""Two Infinity paths end to end through the policy on tiny models: bf16 autocast on the CPU (with
the bf16 KL reference), and the 8B's spatial-patchify tokenizer (each token 2x2 tokenizer cells, 4x
the bits) with a matching transformer: rollout, re-scored log-probs, trajectories from bits, decode."""

import pytest
import torch
from tinyinfinity import write_tiny_infinity
from tinyinfinity_vae import TINY_BSQ_PATCHIFY, write_tiny_bsq, write_tiny_t5

from varrl.policy.load import load_policy
from varrl.policy.sampler import SamplerConfig
from varrl.trainer.params import frozen_reference

PROMPTS = ['a sign with the text "OPEN"', "the text CAT on a red wall"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyinfinity_bf16_patchify")
    return {"model": write_tiny_infinity(root, ".pth"), "vae": write_tiny_bsq(root),
            "t5": write_tiny_t5(root / "flan-t5-tiny"),
            "model12": write_tiny_infinity(root, ".safetensors", seed=1, bits=12),
            "vae12": write_tiny_bsq(root, cfg=TINY_BSQ_PATCHIFY, name="infinity_vae_tiny_patchify.pth")}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("mode,layer", [("plain", 0), ("sampling", -2)])
def test_bf16_autocast_on_the_cpu(files, mode, layer):
    kw = {"vae": files["vae"], "text_encoder": files["t5"], "schedule": "0.06M"}
    policy = load_policy(files["model"], dtype="bfloat16", **kw)
    assert policy.compute_dtype == torch.bfloat16 and policy.model.head.weight.dtype == torch.float32
    s = SamplerConfig(cfg=2.0, cfg_schedule="linear", top_p=0.95, logprob_mode=mode, cfg_insertion_layer=layer)
    traj = policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(0))
    lp = policy.logprobs(traj)
    ratio = [torch.exp(a - b) for a, b in zip(lp, traj.logprobs)]
    assert all(torch.isfinite(r).all() for r in ratio) and max_diff(lp, traj.logprobs) <= 1e-3
    sub = traj.select([3, 0])  # other batch shapes round bf16 matmuls differently
    assert max_diff(policy.logprobs(sub), sub.logprobs) <= 5e-2
    sum(x.sum() for x in lp).backward()  # gradients reach the fp32 master weights
    assert policy.model.head.weight.grad is not None and policy.model.block_list[0].sa.mat_qkv.weight.grad.dtype == \
        torch.float32
    # bf16 is in effect: the fp32 model scores the same tokens differently
    fp32 = load_policy(files["model"], **kw)
    assert max_diff(fp32.logprobs(traj), lp) > 1e-4
    # The KL reference keeps its matmul weights in bf16: the same log-probs, about half the bytes.
    ref = frozen_reference(policy)
    with torch.no_grad():
        assert max_diff(ref.logprobs(traj), lp) == 0.0
    assert ref.model.block_list[0].ffn.fc1.weight.dtype == torch.bfloat16
    assert ref.model.head.weight.dtype == torch.float32 and not any(p.requires_grad for p in ref.parameters())
    size = [sum(p.numel() * p.element_size() for p in m.parameters()) for m in (policy.model, ref.model)]
    assert size[1] < 0.6 * size[0]
    assert all(p.dtype == torch.float32 for p in frozen_reference(fp32).parameters())  # fp32 runs: an fp32 copy


@pytest.fixture(scope="module")
def patchified(files):
    return load_policy(files["model12"], vae=files["vae12"], text_encoder=files["t5"], schedule="0.06M")


@pytest.mark.parametrize("mode", ["plain", "sampling"])
def test_patchify_policy_rescores_what_it_sampled(patchified, mode):
    p = patchified
    assert p.vae.patchify and p.bits_per_token == 12 and p.schedule.image_size == 256  # 16 px per token
    s = SamplerConfig(cfg=2.0, cfg_schedule="constant", top_p=0.97, logprob_mode=mode)
    traj = p.rollout(PROMPTS, n=2, sampler=s, generator=gen(1))
    assert traj.num_steps == 7 and p.bits(traj)[-1].shape == (4, 256, 12)
    assert max_diff(p.logprobs(traj), traj.logprobs) == 0.0
    assert max_diff(p.logprobs(traj.select([2, 1])), traj.select([2, 1]).logprobs) <= 1e-4
    cont = p.rollout(None, n=1, sampler=s, generator=gen(2), start=traj.cut(3))
    assert all(torch.equal(a, b) for a, b in zip(cont.idx[:3], traj.idx[:3]))
    assert max_diff(p.logprobs(cont), cont.logprobs) <= 1e-4


def test_patchify_decode_and_tokens(patchified):
    p = patchified
    s = SamplerConfig(cfg=2.0, cfg_schedule="constant")
    traj = p.rollout(PROMPTS, n=1, sampler=s, generator=gen(3))
    img = p.decode(traj)
    assert img.shape == (2, 3, 256, 256) and 0 <= img.min() and img.max() <= 1 and img.std() > 0
    assert p.decode(traj.cut(4)).shape == (2, 3, 256, 256)
    bits = p.bits(traj)
    back = p.trajectory_from_tokens(PROMPTS, bits, s)
    assert max_diff(back.logprobs, traj.logprobs) == 0.0 and torch.equal(p.decode(back), img)
    # The bits of one token (2x2 cells of 3 bits) reach the image.
    flipped = [b.clone() for b in bits]
    flipped[-1][:, 0, :3] ^= 1
    other = p.decode(p.trajectory_from_tokens(PROMPTS, flipped, s))
    assert (other - img).abs().amax() > 0
