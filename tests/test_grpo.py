"""GRPO's pure functions against numbers worked out by hand."""

import math

import pytest
import torch

from varrl.algorithms.grpo import aggregate, clipped_policy_term, degenerate_groups, group_advantages, k3_kl


def test_group_advantages_group_norm():
    # Group 0: rewards 1, 3 -> mean 2, population std 1 -> A = -1, +1.
    # Group 1: rewards 0, 0, 6 -> mean 2, std sqrt((4+4+16)/3) = sqrt(8) -> A = -2/sqrt8, -2/sqrt8, 4/sqrt8.
    r = torch.tensor([1.0, 3.0, 0.0, 0.0, 6.0])
    g = torch.tensor([0, 0, 1, 1, 1])
    a = group_advantages(r, g, "group", eps=0.0)
    s8 = math.sqrt(8)
    assert torch.allclose(a, torch.tensor([-1.0, 1.0, -2 / s8, -2 / s8, 4 / s8]), atol=1e-6)


def test_group_advantages_batch_and_none():
    r = torch.tensor([1.0, 3.0, 0.0, 4.0])
    g = torch.tensor([0, 0, 1, 1])
    # Centred within groups: -1, 1, -2, 2. Batch std of the raw rewards (mean 2): sqrt((1+1+4+4)/4) = sqrt(2.5).
    assert torch.allclose(group_advantages(r, g, "none"), torch.tensor([-1.0, 1.0, -2.0, 2.0]))
    b = group_advantages(r, g, "batch", eps=0.0)
    assert torch.allclose(b, torch.tensor([-1.0, 1.0, -2.0, 2.0]) / math.sqrt(2.5), atol=1e-6)
    assert torch.allclose(group_advantages(r, g, "none", clip=1.5), torch.tensor([-1.0, 1.0, -1.5, 1.5]))


def test_group_advantages_flat_and_nan_groups():
    # Flat group -> 0 (eps keeps it finite); NaN rows -> 0 and left out of the stats;
    # a group with a single valid row -> 0.
    r = torch.tensor([2.0, 2.0, float("nan"), 1.0, 5.0, float("nan"), 7.0])
    g = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    a = group_advantages(r, g, "group", eps=0.0)
    assert torch.isfinite(a).all()
    # group 1 valid rows 1, 5: mean 3, std 2 -> -1, +1
    assert a.tolist() == [0.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0]
    assert degenerate_groups(torch.tensor([float("nan"), float("nan"), 1.0, 1.0, 0.0, 2.0]),
                             torch.tensor([0, 0, 1, 1, 2, 2])) == (1, 1)


def test_group_advantages_rejects_unknown_norm():
    with pytest.raises(ValueError, match="advantage norm"):
        group_advantages(torch.ones(2), torch.zeros(2, dtype=torch.long), "global")


def test_clipped_policy_term():
    # One sample, A = +2, three tokens with ratios 1.0, 1.5, 0.5; clip 0.2 on both sides.
    # rho*A = 2, 3, 1; clip(rho)*A = 2, 2.4, 1.6; min -> 2, 2.4, 1 -> loss -2, -2.4, -1.
    # Only the 1.5 token is clipped (its clipped value is the smaller one).
    logp_old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5]]))
    loss, clipped = clipped_policy_term(logp, logp_old, torch.tensor([2.0]), 0.2, 0.2)
    assert torch.allclose(loss, torch.tensor([[-2.0, -2.4, -1.0]]), atol=1e-6)
    assert clipped.tolist() == [[False, True, False]]
    # A = -1: rho*A = -1, -1.5, -0.5; clip*A = -1, -1.2, -0.8; min -> -1, -1.5, -0.8.
    loss, clipped = clipped_policy_term(logp, logp_old, torch.tensor([-1.0]), 0.2, 0.2)
    assert torch.allclose(loss, torch.tensor([[1.0, 1.5, 0.8]]), atol=1e-6)
    assert clipped.tolist() == [[False, False, True]]
    # Separate clip-high: with clip_high 0.6 the 1.5 token (A > 0) is no longer clipped.
    loss, clipped = clipped_policy_term(logp, logp_old, torch.tensor([2.0]), 0.2, 0.6)
    assert torch.allclose(loss, torch.tensor([[-2.0, -3.0, -1.0]]), atol=1e-6)


def test_clipped_policy_gradient_is_advantage_at_ratio_one():
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, _ = clipped_policy_term(logp, logp.detach(), torch.tensor([0.5, -2.0]))
    loss.sum().backward()
    # d(-rho*A)/d logp = -A at rho = 1
    assert torch.allclose(logp.grad, torch.tensor([[-0.5] * 3, [2.0] * 3]))


def test_k3_kl():
    # d = logp_ref - logp: d = 0 -> 0; d = ln 2 -> 2 - ln2 - 1; d = -ln 2 -> 0.5 + ln2 - 1.
    logp = torch.zeros(1, 3)
    ref = torch.tensor([[0.0, math.log(2), -math.log(2)]])
    kl = k3_kl(logp, ref)
    expect = [0.0, 1 - math.log(2), math.log(2) - 0.5]
    assert torch.allclose(kl, torch.tensor([expect]), atol=1e-6)
    assert (kl >= 0).all()


def test_aggregate_plain_weights_and_mask():
    # Two steps: n_1 = 1, n_2 = 4. Sample terms: step 1 [3], step 2 [1, 1, 1, 1].
    t1 = torch.tensor([[3.0]])
    t2 = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    # Plain token mean: (3 + 4) / 5.
    assert aggregate([t1, t2]).item() == pytest.approx(7 / 5)
    # Weights k = (1, 0.25): (1*3 + 0.25*4) / (1*1 + 0.25*4) = 4 / 2.
    assert aggregate([t1, t2], [1.0, 0.25]).item() == pytest.approx(2.0)
    # A mask removing two tokens of step 2 keeps the denominator: (3 + 2) / 5.
    m = [torch.ones(1, 1), torch.tensor([[1.0, 0.0, 1.0, 0.0]])]
    assert aggregate([t1, t2], None, m).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2 steps but 1 weights"):
        aggregate([t1, t2], [1.0])
