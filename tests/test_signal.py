"""The policy-gradient signal diagnostics: the sharpening score is the derivative it claims to be,
A * S estimates dE[R]/dbeta without bias, and the reward's variance splits between prefixes and
completions as a hand-worked ANOVA says."""

import pytest
import torch

from varrl.eval.signal import centred_rewards, decided_share, sharpen_scores, sharpen_token_scores
from varrl.policy.sampler import SamplerConfig

PROMPTS = ['the text "OPEN" in red on a white background', 'the text "CAFE" in blue on a black background']


def test_sharpen_scores_is_the_derivative_in_beta():
    torch.manual_seed(0)
    offsets = [0, 1, 5, 14]
    logits_BLV = torch.randn(3, 14, 7) * 2
    idx_BL = torch.randint(0, 7, (3, 14))
    beta_T = torch.ones(3, len(offsets) - 1, requires_grad=True)
    total = 0.0
    for t, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
        lp = (beta_T[:, t, None, None] * logits_BLV[:, a:b]).log_softmax(-1)
        total = total + lp.gather(-1, idx_BL[:, a:b, None]).sum()
    total.backward()
    assert torch.allclose(sharpen_scores(logits_BLV, idx_BL, offsets), beta_T.grad, atol=1e-5)


def test_sharpen_scores_hold_a_truncated_set_fixed():
    """Truncated logits (-inf outside the top-k/top-p set), by hand: the set {1.0, 0.0} with the
    first drawn scores 1 - (1 * s + 0 * (1 - s)), s = e / (e + 1); a token alone in its set scores 0;
    and it is d log p / d beta with the set held fixed, as the update's truncated log-probs are."""
    ninf = float("-inf")
    logits = torch.tensor([[[1.0, 0.0, ninf], [2.0, ninf, ninf]]])
    S = sharpen_token_scores(logits, torch.tensor([[0, 0]]))
    e = torch.e
    assert torch.allclose(S, torch.tensor([[1 - e / (e + 1), 0.0]]))
    torch.manual_seed(1)
    z_BLV, keep_BLV = torch.randn(2, 6, 5) * 2, torch.rand(2, 6, 5) < 0.6
    keep_BLV[..., 0] = True
    idx_BL = torch.distributions.Categorical(logits=z_BLV.masked_fill(~keep_BLV, ninf)).sample()
    beta = torch.tensor(1.0, requires_grad=True)
    (beta * z_BLV).masked_fill(~keep_BLV, ninf).log_softmax(-1).gather(-1, idx_BL[..., None]).sum().backward()
    assert torch.allclose(sharpen_token_scores(z_BLV.masked_fill(~keep_BLV, ninf), idx_BL).sum(), beta.grad, atol=1e-5)


def test_centred_rewards_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0])
    group = torch.tensor([0, 0, 0, 1, 1])
    # group 0: mean 2, scale 3/2; group 1: mean 15, scale 2/1
    assert torch.allclose(centred_rewards(rewards, group), torch.tensor([-1.5, 0.0, 1.5, -10.0, 10.0]))
    # a NaN reward ("not applicable") stays NaN and leaves its group: mean 2 of two rows, scale 2/1
    assert torch.allclose(centred_rewards(torch.tensor([1.0, float("nan"), 3.0]), torch.zeros(3, dtype=torch.long)),
                          torch.tensor([-2.0, float("nan"), 2.0]), equal_nan=True)


def test_a_times_s_estimates_the_temperature_derivative():
    """One grid of one token over 4 values, reward = the value's index: E[A * S] is dE[R]/dbeta."""
    logits = torch.tensor([0.5, -1.0, 1.5, 0.0])
    reward_of = torch.arange(4.0)
    beta = torch.tensor(1.0, requires_grad=True)
    (torch.softmax(beta * logits, -1) @ reward_of).backward()
    exact = beta.grad.item()
    gen = torch.Generator().manual_seed(0)
    n_groups, G = 40_000, 4
    idx = torch.multinomial(logits.softmax(-1), n_groups * G, replacement=True, generator=gen)
    S = sharpen_scores(logits.expand(len(idx), 1, 4), idx[:, None], [0, 1])[:, 0]
    A = centred_rewards(reward_of[idx], torch.arange(n_groups).repeat_interleave(G))
    estimate, se = (A * S).mean().item(), (A * S).std().item() / len(idx) ** 0.5
    assert abs(estimate - exact) < 3 * se
    assert 3 * se < 0.1 * abs(exact)  # tight enough that leaving out the G/(G-1) factor would fail


def test_teacher_logits_are_what_logprobs_score(tiny_policy):
    traj = tiny_policy.rollout(PROMPTS, n=2, sampler=SamplerConfig(cfg=0.0), generator=torch.Generator().manual_seed(3))
    logits = tiny_policy.teacher_logits(traj)
    off = tiny_policy.schedule.offsets
    for k, lp in enumerate(tiny_policy.logprobs(traj)):
        mine = logits[:, off[k]:off[k + 1]].log_softmax(-1).gather(-1, traj.idx[k][..., None]).squeeze(-1)
        assert torch.allclose(mine, lp, atol=1e-5)


def test_decided_share_by_hand():
    # One prompt, 2 prefixes x 2 completions: prefix means 1 and 3, completions 0/2 and 2/4.
    # MSW = mean(var(0,2), var(2,4)) = mean(2, 2) = 2; MSB = K var(1, 3) = 2 * 2 = 4;
    # between = (4 - 2) / 2 = 1, within = 2.
    r = torch.tensor([[[0.0, 2.0], [2.0, 4.0]]])
    assert decided_share(r) == (1.0, 2.0)
    # A second prompt whose prefix decides everything (no within-prefix spread): between = var(0, 6) = 18.
    both = torch.cat([r, torch.tensor([[[0.0, 0.0], [6.0, 6.0]]])])
    assert decided_share(both) == ((1.0 + 18.0) / 2, (2.0 + 0.0) / 2)
    # A prompt with a NaN reward is left out; completions that ignore the prefix give about 0 between.
    nan = torch.tensor([[[float("nan"), 1.0], [1.0, 1.0]]])
    assert decided_share(torch.cat([r, nan])) == (1.0, 2.0)
    noise = torch.randn(400, 4, 8, generator=torch.Generator().manual_seed(0))
    between, within = decided_share(noise)
    assert abs(between) < 0.03 and abs(within - 1.0) < 0.05
    with pytest.raises(ValueError, match="G >= 2 and K >= 2"):
        decided_share(torch.zeros(1, 2, 1))
