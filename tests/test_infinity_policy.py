"""The Infinity policy on a tiny random transformer + BSQ tokenizer + T5 in the released layouts:
loading, sampling == re-scoring, guidance checked against the official-style full teacher pass,
prefix continuation, trajectories from given bits, and model directories."""

import json

import pytest
import torch
from tinyinfinity import write_tiny_infinity
from tinyinfinity_vae import write_tiny_bsq, write_tiny_t5

from varrl.checkpoint import CheckpointError
from varrl.policy.base import NextScalePolicy
from varrl.policy.infinity_policy import InfinityPolicy
from varrl.policy.infinity_sampler import bit_view, truncate_bits, unpack_bits
from varrl.policy.load import load_policy, save_policy
from varrl.policy.sampler import SamplerConfig

PROMPTS = ['a sign with the text "OPEN"', "the text CAT on a red wall"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyinfinity")
    return {"model": write_tiny_infinity(root, ".pth"), "vae": write_tiny_bsq(root),
            "t5": write_tiny_t5(root / "flan-t5-tiny"), "root": root}


def load(files, path=None, **kw):
    return load_policy(path or files["model"], vae=files["vae"], text_encoder=files["t5"],
                       **{"schedule": "0.06M", **kw})


@pytest.fixture(scope="module")
def policy(files):
    return load(files, schedule="0.06M")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def test_policy_loads_from_every_released_layout(files, policy):
    assert isinstance(policy, InfinityPolicy) and isinstance(policy, NextScalePolicy)
    assert [h for h, _ in policy.schedule.grids] == [1, 2, 4, 6, 8, 12, 16]
    assert policy.schedule.image_size == 64  # 16 tokens x the tiny tokenizer's 4 px
    for layout in (".safetensors", "shards"):
        other = load(files, write_tiny_infinity(files["root"], layout))
        assert all(torch.equal(a, b) for a, b in zip(other.model.state_dict().values(),
                                                      policy.model.state_dict().values()))


CASES = [(0.0, "constant", 0, 0.0, 0), (2.0, "constant", 0, 0.97, 0), (3.0, "linear", 1, 0.9, 0),
         (2.0, "constant", 0, 0.97, -2), (1.5, "linear", 2, 0.8, -1)]


@pytest.mark.parametrize("mode", ["plain", "sampling"])
@pytest.mark.parametrize("cfg,schedule,top_k,top_p,layer", CASES)
def test_rescored_equals_sampled(policy, mode, cfg, schedule, top_k, top_p, layer):
    s = SamplerConfig(cfg=cfg, cfg_schedule=schedule, top_k=top_k, top_p=top_p, logprob_mode=mode,
                      cfg_insertion_layer=layer)
    traj = policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(0))
    assert traj.prompts == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2 and traj.num_steps == 7
    assert max_diff(policy.logprobs(traj), traj.logprobs) == 0.0  # the same rows: the same calls, bit for bit
    # Other batch shapes round matmuls differently in the last bits (amplified by guidance).
    assert max_diff(policy.logprobs(traj.select([3, 0])), traj.select([3, 0]).logprobs) <= 1e-4
    again = policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(0))
    assert all(torch.equal(a, b) for a, b in zip(traj.idx, again.idx))


@pytest.mark.parametrize("layer", [0, -1])
def test_cold_tail_keeps_the_head_and_rescores(policy, layer):
    warm = SamplerConfig(cfg=2.0, cfg_schedule="constant", top_p=0.9, temperature=0.9, logprob_mode="sampling",
                         cfg_insertion_layer=layer)
    cold = SamplerConfig(cfg=2.0, cfg_schedule="constant", top_p=0.9, temperature=0.9, logprob_mode="sampling",
                         cfg_insertion_layer=layer, tail_after=4, tail_temperature=0.05)
    a = policy.rollout(PROMPTS, n=2, sampler=warm, generator=gen(0))
    b = policy.rollout(PROMPTS, n=2, sampler=cold, generator=gen(0))
    assert all(torch.equal(x, y) for x, y in zip(a.idx[:4], b.idx[:4]))  # grids 1-4: as without the tail
    assert not all(torch.equal(x, y) for x, y in zip(a.idx[4:], b.idx[4:]))
    assert max_diff(policy.logprobs(b), b.logprobs) == 0.0  # each step re-scored at its own temperature
    # Colder bits are surer: the tail's stored log-probs rise towards 0.
    assert all(bool(lp_b.mean() > lp_a.mean()) for lp_a, lp_b in zip(a.logprobs[4:], b.logprobs[4:]))


def full_pass(policy, traj, uncond: bool, stop: int | None = None, x=None, first: int = 0):
    """The official-style teacher pass: one block-causal masked pass over every token."""
    m, bits = policy.model, [b for b in policy.bits(traj)]
    ctx = policy._context(traj.prompts, uncond)
    inputs = torch.cat([i for i in policy._next_inputs(bits[:-1])], dim=1)
    lay = m.layout(policy.schedule.grids, policy.rope_hw, "cpu")
    n = traj.num_steps
    if x is None:
        x = m.embed(ctx, inputs, lay, 0, n)
    h = m.run_blocks(x, ctx, lay, 0, n, first, m.cfg.depth if stop is None else stop, None)
    return h if stop is not None else m.logits(h, ctx)


@torch.no_grad()
def test_logits_guidance_matches_the_official_formula(policy):
    s = SamplerConfig(cfg=2.0, cfg_schedule="linear", temperature=0.7, top_p=0.9, logprob_mode="sampling")
    traj = policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(3))
    cond, unc = full_pass(policy, traj, False), full_pass(policy, traj, True)
    off = policy.schedule.offsets
    for t in range(traj.num_steps):
        cfg = 1 + 2.0 * t / 6  # Infinity's cfg list from varrl's linear ramp
        lg = cfg * bit_view(cond[:, off[t]: off[t + 1]]) / 0.7 + (1 - cfg) * bit_view(unc[:, off[t]: off[t + 1]]) / 0.7
        bits = unpack_bits(traj.idx[t], policy.bits_per_token)
        lp = truncate_bits(lg, 0, 0.9).log_softmax(-1).gather(-1, bits.unsqueeze(-1)).squeeze(-1).sum(-1)
        assert torch.allclose(traj.logprobs[t], lp, atol=1e-4), t


@torch.no_grad()
def test_hidden_state_guidance_mixes_after_block_depth_minus_k(policy):
    s = SamplerConfig(cfg=2.0, cfg_schedule="constant", logprob_mode="sampling", cfg_insertion_layer=-2)
    traj = policy.rollout(PROMPTS, n=1, sampler=s, generator=gen(4))
    depth = policy.model.cfg.depth
    hc = full_pass(policy, traj, False, stop=depth - 1)  # blocks 0..depth-2: the mixing block is depth-2
    hu = full_pass(policy, traj, True, stop=depth - 1)
    ctx = policy._context(traj.prompts, False)
    lay = policy.model.layout(policy.schedule.grids, policy.rope_hw, "cpu")
    mixed = policy.model.run_blocks(3.0 * hc - 2.0 * hu, ctx, lay, 0, 7, depth - 1, depth, None)
    lg = bit_view(policy.model.logits(mixed, ctx))
    bits = torch.cat([unpack_bits(i, policy.bits_per_token) for i in traj.idx], dim=1)
    want = lg.log_softmax(-1).gather(-1, bits.unsqueeze(-1)).squeeze(-1).sum(-1)
    assert torch.allclose(torch.cat(traj.logprobs, dim=1), want, atol=1e-4)
    # and it is not the logits-space form
    s0 = SamplerConfig(cfg=2.0, cfg_schedule="constant", logprob_mode="sampling")
    other = policy.trajectory_from_tokens(traj.prompts, policy.bits(traj), s0)
    assert max_diff(other.logprobs, traj.logprobs) > 1e-3


@pytest.mark.parametrize("layer,mode", [(0, "plain"), (0, "sampling"), (-2, "plain")])
def test_continuation_equals_uninterrupted(policy, layer, mode):
    s = SamplerConfig(cfg=2.0, cfg_schedule="linear", top_p=0.95, logprob_mode=mode, cfg_insertion_layer=layer)
    full = policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(5))
    g2 = gen(5)
    pre = policy.rollout(PROMPTS, n=2, sampler=s, generator=g2, steps=3)
    assert pre.state is not None and pre.num_steps == 3
    cont = policy.rollout(None, n=1, sampler=s, generator=g2, start=pre)
    assert all(torch.equal(a, b) for a, b in zip(full.idx, cont.idx))
    assert max_diff(full.logprobs, cont.logprobs) <= 1e-5
    g3 = gen(5)
    policy.rollout(PROMPTS, n=2, sampler=s, generator=g3, steps=3)
    again = policy.rollout(None, n=1, sampler=s, generator=g3, start=full.cut(3))  # prefilled again
    assert all(torch.equal(a, b) for a, b in zip(full.idx, again.idx))
    forked = policy.rollout(None, n=3, sampler=s, generator=gen(9), start=pre)
    assert forked.parent.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # the prefix was sampled 4 rows wide, re-scored 12 rows wide: rounding of other batch shapes
    assert max_diff(policy.logprobs(forked), forked.logprobs) <= 1e-4


def test_decode_and_trajectories_from_tokens(policy):
    s = SamplerConfig(cfg=2.0, cfg_schedule="constant")
    traj = policy.rollout(PROMPTS, n=1, sampler=s, generator=gen(1))
    img = policy.decode(traj)
    assert img.shape == (2, 3, 64, 64) and 0 <= img.min() and img.max() <= 1
    assert policy.decode(traj.cut(3)).shape == (2, 3, 64, 64)
    bits = policy.bits(traj)
    assert bits[-1].shape == (2, 256, 6) and set(bits[-1].unique().tolist()) <= {0, 1}
    back = policy.trajectory_from_tokens(PROMPTS, bits, s)
    assert all(torch.equal(a, b) for a, b in zip(back.idx, traj.idx)) and max_diff(back.logprobs, traj.logprobs) == 0
    assert torch.equal(policy.decode(back), img)
    with pytest.raises(ValueError, match=r"step 2 must be \[B, h\*w, d\]"):
        policy.trajectory_from_tokens(PROMPTS, [bits[0], bits[1][:, :3]])
    with pytest.raises(ValueError, match="in \\{0, 1\\}"):
        policy.trajectory_from_tokens(PROMPTS, [bits[0] * 2])


def test_logprobs_are_differentiable_through_both_branches(policy):
    s = SamplerConfig(cfg=2.0, cfg_schedule="constant", logprob_mode="sampling")
    traj = policy.rollout(PROMPTS, n=1, sampler=s, generator=gen(2))
    policy.model.zero_grad()
    sum(lp.sum() for lp in policy.logprobs(traj)).backward()
    assert policy.model.cfg_uncond.grad[:3].abs().sum() > 0  # the unconditional text rows were used
    assert policy.model.head.weight.grad.abs().sum() > 0
    policy.model.zero_grad()


def test_gradient_checkpointing_gives_the_same_logprobs(policy):
    s = SamplerConfig(cfg=2.0, cfg_schedule="constant", logprob_mode="sampling", cfg_insertion_layer=-1)
    traj = policy.rollout(PROMPTS, n=1, sampler=s, generator=gen(6))
    policy.model.grad_checkpointing = True
    try:
        lp = policy.logprobs(traj)
        sum(x.sum() for x in lp).backward()
    finally:
        policy.model.grad_checkpointing = False
    assert max_diff(lp, traj.logprobs) <= 1e-5 and policy.model.head.weight.grad is not None
    policy.model.zero_grad()


def test_model_directory_round_trip(policy, files, tmp_path):
    save_policy(policy, tmp_path / "exported", {"trained": {"rl_steps": 0}})
    meta = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert meta["format"] == "varrl-infinity/1" and meta["sources"]["schedule"] == "0.06M"
    back = load_policy(tmp_path / "exported")
    s = SamplerConfig(cfg=2.0, top_p=0.9)
    a = policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(4))
    b = back.rollout(PROMPTS, n=2, sampler=s, generator=gen(4))
    assert all(torch.equal(x, y) for x, y in zip(a.idx, b.idx))


def test_loading_mistakes_are_named(files, tmp_path):
    with pytest.raises(CheckpointError, match="BSQ tokenizer"):
        load_policy(files["model"], text_encoder=files["t5"])
    with pytest.raises(CheckpointError, match="Flan-T5"):
        load_policy(files["model"], vae=files["vae"])
    wrong = write_tiny_infinity(tmp_path, ".safetensors", bits=5)
    with pytest.raises(CheckpointError, match="5 bits per token"):
        load(files, wrong)
    with pytest.raises(CheckpointError, match="Infinity models only"):
        load_policy(None, text_encoder=files["t5"])
