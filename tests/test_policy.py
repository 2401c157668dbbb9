from __future__ import annotations

import itertools
import math

import pytest
import torch

from varrl.models.text import PromptError
from varrl.policy.base import NextScalePolicy
from varrl.policy.sampler import (
    SamplerConfig,
    SamplerConfigError,
    draw,
    sampling_logits,
    token_logprobs,
    truncate_logits,
)
from varrl.policy.trajectory import Trajectory

PROMPTS = ['the text "OPEN" in red on a white background', 'a blue sign that says "cat"']
TOKENS = (1, 4, 16)  # sides (1, 2, 4)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b)
    return max((x.detach() - y.detach()).abs().max().item() for x, y in zip(a, b))


def same_tokens(a: Trajectory, b: Trajectory) -> bool:
    return len(a.idx) == len(b.idx) and all(torch.equal(x, y) for x, y in zip(a.idx, b.idx))


MATRIX = list(itertools.product(("plain", "sampling"), (0.0, 3.0), ((0, 0.0), (5, 0.8))))
IDS = [f"{m}-cfg{c:g}-k{k}-p{p:g}" for m, c, (k, p) in MATRIX]


def test_policy_implements_protocol(tiny_policy):
    assert isinstance(tiny_policy, NextScalePolicy)
    assert tiny_policy.schedule.tokens_per_step == TOKENS


@pytest.mark.parametrize(("mode", "cfg", "trunc"), MATRIX, ids=IDS)
def test_rollout_rescore_and_seeding(tiny_policy, mode, cfg, trunc):
    sampler = SamplerConfig(cfg=cfg, top_k=trunc[0], top_p=trunc[1], logprob_mode=mode)
    traj = tiny_policy.rollout(PROMPTS, n=3, sampler=sampler, generator=gen(11))
    assert traj.batch_size == 6 and traj.num_steps == 3 and traj.complete
    assert traj.prompts == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    assert traj.group.tolist() == [0, 0, 0, 1, 1, 1]
    assert traj.parent is None
    assert [tuple(i.shape) for i in traj.idx] == [(6, n) for n in TOKENS]
    assert all(int(i.min()) >= 0 and int(i.max()) < 64 for i in traj.idx)
    assert all(bool((lp <= 0).all()) and bool(torch.isfinite(lp).all()) for lp in traj.logprobs)

    with torch.no_grad():
        rescored = tiny_policy.logprobs(traj)
    assert max_diff(rescored, traj.logprobs) <= 1e-5
    # a subset of steps
    with torch.no_grad():
        last = tiny_policy.logprobs(traj, steps=[2])
    assert max_diff(last, traj.logprobs[2:]) <= 1e-5

    again = tiny_policy.rollout(PROMPTS, n=3, sampler=sampler, generator=gen(11))
    assert same_tokens(traj, again)
    assert max_diff(traj.logprobs, again.logprobs) == 0.0
    other = tiny_policy.rollout(PROMPTS, n=3, sampler=sampler, generator=gen(12))
    assert not same_tokens(traj, other)


def test_truncation_actually_truncates(tiny_policy):
    # In sampling mode the stored log-probs are under the truncated distribution, so they are
    # strictly larger than the plain (untruncated, unguided) ones for the same tokens.
    s = SamplerConfig(cfg=0.0, top_k=5, top_p=0.8, logprob_mode="sampling")
    traj = tiny_policy.rollout(PROMPTS, n=3, sampler=s, generator=gen(0))
    plain = tiny_policy.logprobs(Trajectory(traj.prompts, traj.idx, traj.logprobs, SamplerConfig(cfg=0.0),
                                            traj.schedule, traj.group))
    for lp_s, lp_p in zip(traj.logprobs, plain):
        assert bool((lp_s > lp_p.detach() + 1e-4).all())


def test_greedy_top_k_one(tiny_policy):
    s = SamplerConfig(cfg=0.0, top_k=1, logprob_mode="sampling")
    a = tiny_policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(0))
    b = tiny_policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(1))
    assert same_tokens(a, b)  # deterministic whatever the seed
    assert all(bool((lp == 0).all()) for lp in a.logprobs)  # a point mass
    plain = tiny_policy.logprobs(Trajectory(a.prompts, a.idx, a.logprobs, SamplerConfig(cfg=0.0),
                                            a.schedule, a.group))
    # the greedy token is the argmax of the (unguided) distribution: its probability is >= 1/V
    assert all(bool((lp >= math.log(1 / 64) - 1e-6).all()) and bool((lp < 0).all()) for lp in plain)


@pytest.mark.parametrize(("cfg", "trunc"), [(0.0, (0, 0.0)), (3.0, (0, 0.0)), (3.0, (5, 0.8)), (0.0, (5, 0.8))])
@pytest.mark.parametrize("mode", ["plain", "sampling"])
def test_continuation_equals_uninterrupted(tiny_policy, cfg, trunc, mode):
    s = SamplerConfig(cfg=cfg, top_k=trunc[0], top_p=trunc[1], logprob_mode=mode)
    full = tiny_policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(5))
    g2 = gen(5)
    pre = tiny_policy.rollout(PROMPTS, n=2, sampler=s, generator=g2, steps=2)
    assert pre.num_steps == 2 and not pre.complete
    cont = tiny_policy.rollout(None, n=1, sampler=s, generator=g2, start=pre.cut(2))
    assert cont.num_steps == 3
    assert same_tokens(full, cont)
    assert max_diff(full.logprobs, cont.logprobs) <= 1e-5  # text encoded on 4 rows vs 2: float noise only
    assert cont.parent.tolist() == [0, 1, 2, 3]
    assert cont.group.tolist() == full.group.tolist() == [0, 0, 1, 1]
    # passing the prefix's own prompts is allowed too
    g3 = gen(5)
    pre3 = tiny_policy.rollout(PROMPTS, n=2, sampler=s, generator=g3, steps=1)
    cont3 = tiny_policy.rollout(pre3.prompts, n=1, sampler=s, generator=g3, start=pre3)
    assert same_tokens(full, cont3)


def test_n_continuations_from_prefix(tiny_policy):
    s = SamplerConfig(cfg=3.0, top_k=5, top_p=0.8, logprob_mode="sampling")
    pre = tiny_policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(1), steps=2)
    cont = tiny_policy.rollout(None, n=3, sampler=s, generator=gen(2), start=pre)
    assert cont.batch_size == 12 and cont.num_steps == 3
    assert cont.parent.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert cont.group.tolist() == [0] * 6 + [1] * 6
    assert cont.prompts == [PROMPTS[0]] * 6 + [PROMPTS[1]] * 6
    for k in range(2):
        assert torch.equal(cont.idx[k], pre.idx[k][cont.parent])
        assert torch.equal(cont.logprobs[k], pre.logprobs[k][cont.parent])
    assert max_diff(tiny_policy.logprobs(cont), cont.logprobs) <= 1e-5
    # the last step differs between siblings of one prefix (3 x 16 tokens drawn independently)
    last = cont.idx[2].view(4, 3, 16)
    assert any(not torch.equal(last[r, 0], last[r, 1]) for r in range(4))


def test_trajectory_cut_select_cat(tiny_policy):
    s = SamplerConfig(cfg=0.0)
    t = tiny_policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(0))
    c = t.cut(1)
    assert c.num_steps == 1 and c.batch_size == 4 and not c.complete
    assert torch.equal(c.idx[0], t.idx[0])
    assert t.cut(3).num_steps == 3
    for bad in (0, 4):
        with pytest.raises(ValueError, match="cut"):
            t.cut(bad)
    sel = t.select([3, 0])
    assert sel.prompts == [PROMPTS[1], PROMPTS[0]]
    assert sel.group.tolist() == [1, 0]
    assert [tuple(i.shape) for i in sel.idx] == [(2, n) for n in TOKENS]
    assert torch.equal(sel.idx[2][0], t.idx[2][3])
    both = Trajectory.cat([t, sel])
    assert both.batch_size == 6
    assert both.group.tolist() == [0, 0, 1, 1, 1, 0]
    assert [tuple(i.shape) for i in both.logprobs] == [(6, n) for n in TOKENS]
    assert both.parent is None
    with pytest.raises(ValueError, match="same number of steps"):
        Trajectory.cat([t, t.cut(2)])
    with pytest.raises(ValueError, match="step 1"):
        Trajectory(["a"], [torch.zeros(2, 1, dtype=torch.long)], [torch.zeros(2, 1)], s, t.schedule,
                   torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="log-prob grids"):
        Trajectory(["a"], [torch.zeros(1, 1, dtype=torch.long)], [], s, t.schedule, torch.zeros(1, dtype=torch.long))


def test_decode(tiny_policy):
    t = tiny_policy.rollout(PROMPTS, n=1, sampler=SamplerConfig(cfg=0.0), generator=gen(0))
    img = tiny_policy.decode(t)
    assert img.shape == (2, 3, 32, 32) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert float(img.std()) > 0
    preview = tiny_policy.decode(t.cut(1))
    assert preview.shape == (2, 3, 32, 32)
    assert not torch.equal(preview, img)


def test_logprobs_are_differentiable(tiny_policy):
    model = tiny_policy.model
    s = SamplerConfig(cfg=3.0, top_k=5, top_p=0.8, logprob_mode="sampling")
    t = tiny_policy.rollout(PROMPTS, n=2, sampler=s, generator=gen(0))
    try:
        lps = tiny_policy.logprobs(t)
        assert all(lp.requires_grad for lp in lps)
        torch.stack([lp.sum() for lp in lps]).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        assert grads["head.weight"] is not None and float(grads["head.weight"].abs().sum()) > 0
        assert grads["text.tok.weight"] is not None and float(grads["text.tok.weight"].abs().sum()) > 0
        assert grads["blocks.0.attn.qkv.weight"] is not None
        assert all(p.grad is None for p in tiny_policy.tokenizer.parameters())
    finally:
        model.zero_grad(set_to_none=True)


def test_rollout_errors(tiny_policy):
    s = SamplerConfig(cfg=0.0)
    with pytest.raises(PromptError, match="empty"):
        tiny_policy.rollout([""], n=1, sampler=s)
    with pytest.raises(PromptError, match="at most 63"):
        tiny_policy.rollout(["x" * 64], n=1, sampler=s)
    with pytest.raises(ValueError, match="at least one prompt"):
        tiny_policy.rollout([], n=1, sampler=s)
    with pytest.raises(ValueError, match="n must be"):
        tiny_policy.rollout(PROMPTS, n=0, sampler=s)
    for steps in (0, 4):
        with pytest.raises(ValueError, match="steps must be in 1..3"):
            tiny_policy.rollout(PROMPTS, n=1, sampler=s, steps=steps)
    pre = tiny_policy.rollout(PROMPTS, n=1, sampler=s, generator=gen(0), steps=2)
    with pytest.raises(ValueError, match="prompts"):
        tiny_policy.rollout(["something else", "x"], n=1, sampler=s, start=pre)
    with pytest.raises(ValueError, match="steps must be in 3..3"):
        tiny_policy.rollout(None, n=1, sampler=s, start=pre, steps=2)
    with pytest.raises(ValueError, match="logprob_mode"):
        tiny_policy.rollout(None, n=1, sampler=SamplerConfig(cfg=0.0, logprob_mode="sampling"), start=pre)


@pytest.mark.parametrize("kwargs", [{"top_p": 2.0}, {"top_p": -0.1}, {"top_k": -1}, {"temperature": 0.0},
                                    {"cfg": -1.0}, {"cfg_schedule": "cosine"}, {"logprob_mode": "other"}])
def test_sampler_config_errors(kwargs):
    with pytest.raises(SamplerConfigError):
        SamplerConfig(**kwargs)


def _finite(x: torch.Tensor) -> list[bool]:
    return torch.isfinite(x).flatten().tolist()


def test_truncate_top_k():
    logits = torch.tensor([[[1.0, 3.0, 2.0, 0.0]]])
    out = truncate_logits(logits, top_k=2, top_p=0.0)
    assert _finite(out) == [False, True, True, False]
    assert out[0, 0, 1].item() == 3.0 and out[0, 0, 2].item() == 2.0
    assert torch.equal(truncate_logits(logits, 0, 0.0), logits)
    assert torch.equal(truncate_logits(logits, 4, 1.0), logits)


def test_truncate_top_p():
    logits = torch.tensor([0.6, 0.3, 0.1]).log().view(1, 1, 3)
    assert _finite(truncate_logits(logits, 0, 0.5)) == [True, False, False]
    assert _finite(truncate_logits(logits, 0, 0.7)) == [True, True, False]
    assert _finite(truncate_logits(logits, 0, 0.95)) == [True, True, True]
    # order of the vocabulary does not matter
    shuffled = torch.tensor([0.1, 0.6, 0.3]).log().view(1, 1, 3)
    assert _finite(truncate_logits(shuffled, 0, 0.7)) == [False, True, True]
    # tiny top_p still keeps the most likely token
    assert _finite(truncate_logits(shuffled, 0, 1e-6)) == [False, True, False]


def test_truncate_top_k_then_top_p_is_top_p_of_the_top_k_set():
    """The fast path (top-p over the k values only) equals top-p applied to the top-k-masked logits,
    and ties at the k-th value keep every tied token, as plain top-k does."""
    torch.manual_seed(0)
    for scale in (0.3, 1.0, 4.0):
        logits = torch.randn(3, 40, 16) * scale
        for k, p in ((2, 0.9), (5, 0.8), (1, 0.5), (3, 0.2)):
            assert torch.equal(truncate_logits(logits, k, p), truncate_logits(truncate_logits(logits, k, 0.0), 0, p))
    tied = torch.tensor([[[1.0, 3.0, 3.0, 3.0, 0.0]]])
    assert _finite(truncate_logits(tied, 2, 0.9)) == [False, True, True, True, False]


def test_guidance_schedules():
    lin = SamplerConfig(cfg=3.0, cfg_schedule="linear")
    assert [lin.guidance(k, 4) for k in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert lin.guidance(0, 1) == 3.0
    const = SamplerConfig(cfg=3.0, cfg_schedule="constant")
    assert [const.guidance(k, 4) for k in range(4)] == [3.0] * 4
    assert SamplerConfig(cfg=3.0).uses_uncond and not SamplerConfig(cfg=0.0).uses_uncond
    assert SamplerConfig(cfg=3.0, logprob_mode="sampling").rescore_needs_uncond
    assert not SamplerConfig(cfg=3.0, logprob_mode="plain").rescore_needs_uncond


def test_sampling_logits_and_token_logprobs():
    cond = torch.tensor([[[1.0, 2.0, 0.5]]])
    uncond = torch.tensor([[[0.5, 1.0, 1.0]]])
    s = SamplerConfig(cfg=3.0)
    torch.testing.assert_close(sampling_logits(cond, uncond, 1.0, s, 1.0), 2 * cond - uncond)
    torch.testing.assert_close(sampling_logits(cond, uncond, 1.0, s, 1.0), torch.tensor([[[1.5, 3.0, 0.0]]]))
    assert torch.equal(sampling_logits(cond, uncond, 0.0, s, 1.0), cond)
    assert torch.equal(sampling_logits(cond, None, 2.0, s, 1.0), cond)
    hot = SamplerConfig(cfg=0.0, temperature=2.0)
    torch.testing.assert_close(sampling_logits(cond, None, 0.0, hot, hot.temperature), cond / 2)

    probs = torch.tensor([0.6, 0.3, 0.1]).log().view(1, 1, 3)
    idx = torch.tensor([[1]])
    plain = SamplerConfig(cfg=0.0, top_p=0.7, logprob_mode="plain")
    samp = SamplerConfig(cfg=0.0, top_p=0.7, logprob_mode="sampling")
    assert token_logprobs(probs, None, 0.0, plain, 1.0, idx).item() == pytest.approx(math.log(0.3), abs=1e-6)
    # truncated to {0.6, 0.3} and renormalised: 0.3 / 0.9
    assert token_logprobs(probs, None, 0.0, samp, 1.0, idx).item() == pytest.approx(math.log(1 / 3), abs=1e-6)
    # A token outside the set (drawn at its edge, re-scored with logits a rounding away) is scored
    # as if the set held it too, {0.6, 0.3, 0.1}: finite, so the loss is never poisoned.
    edge = probs.clone().requires_grad_(True)
    lp = token_logprobs(edge, None, 0.0, samp, 1.0, torch.tensor([[2]]))
    assert lp.item() == pytest.approx(math.log(0.1), abs=1e-6)
    lp.sum().backward()
    assert torch.isfinite(edge.grad).all()


def test_draw_respects_truncation():
    logits = torch.full((2, 5, 4), float("-inf"))
    logits[..., 2] = 0.0
    assert draw(logits, gen(0)).tolist() == [[2] * 5] * 2
    uniform = torch.zeros(1, 2000, 4)
    counts = torch.bincount(draw(uniform, gen(0)).flatten(), minlength=4)
    assert int(counts.min()) > 400  # every token drawn, about 500 each
