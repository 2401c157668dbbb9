"""Infinity's bitwise sampling math against numbers worked out by hand."""

import math

import pytest
import torch

from varrl.policy.infinity_sampler import (
    bit_view,
    draw_bits,
    guided_bit_logits,
    keep_drawn,
    mix_hidden,
    pack_bits,
    token_logprobs,
    truncate_bits,
    unpack_bits,
)
from varrl.policy.sampler import SamplerConfig, SamplerConfigError

L3 = math.log(3.0)


def test_bit_view_pairs_adjacent_channels():
    logits = torch.arange(6.0).view(1, 1, 6)
    assert bit_view(logits).tolist() == [[[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]]]


def test_token_logprob_is_the_sum_over_its_bits():
    # bit 0: logits (0, ln 3) -> p(1) = 3/4; bit 1: (0, 0) -> p = 1/2. Token bits (1, 0): log(3/8).
    logits = bit_view(torch.tensor([[[0.0, L3, 0.0, 0.0]]]))
    lp = token_logprobs(logits, torch.tensor([[[1, 0]]]))
    assert lp.shape == (1, 1) and abs(lp.item() - math.log(3 / 8)) < 1e-6
    lp0 = token_logprobs(logits, torch.tensor([[[0, 1]]]))
    assert abs(lp0.item() - math.log(1 / 8)) < 1e-6


def test_logits_guidance_scales_each_branch_by_tau_then_mixes():
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])
    # c = (0.5, 1), u = (1.5, 0): 3c - 2u = (-1.5, 3)
    assert guided_bit_logits(cond, uncond, 3.0, 2.0).tolist() == [-1.5, 3.0]
    assert guided_bit_logits(cond, uncond, 1.0, 2.0).tolist() == [0.5, 1.0]  # cfg 1: the conditional branch
    assert guided_bit_logits(cond, None, 3.0, 1.0).tolist() == [1.0, 2.0]


def test_hidden_guidance_mixes_states():
    c, u = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    assert mix_hidden(c, u, 3.0).tolist() == [4.0, -5.0]  # 3c - 2u
    assert mix_hidden(c, u, 1.0) is c


def test_top_p_drops_a_bit_value_at_or_below_one_minus_top_p():
    logits = torch.tensor([[0.0, math.log(99.0)], [0.0, math.log(9.0)], [math.log(99.0), 0.0]]).view(1, 1, 3, 2)
    out = truncate_bits(logits, 0, 0.97)  # p(smaller) = 0.01, 0.1, 0.01
    assert out[0, 0, 0, 0] == float("-inf") and out[0, 0, 0, 1] == logits[0, 0, 0, 1]
    assert torch.equal(out[0, 0, 1], logits[0, 0, 1])
    assert out[0, 0, 2, 1] == float("-inf") and out[0, 0, 2, 0] == logits[0, 0, 2, 0]
    q = torch.tensor([0.0, L3]).view(1, 1, 1, 2)  # p(0) = 1/4
    assert truncate_bits(q, 0, 0.7)[0, 0, 0, 0] == float("-inf")  # 0.25 <= 0.3: dropped
    assert torch.equal(truncate_bits(q, 0, 0.8), q)  # 0.25 > 0.2: kept
    tie = torch.zeros(1, 1, 1, 2)
    assert truncate_bits(tie, 0, 0.5)[0, 0, 0].tolist() == [float("-inf"), 0.0]  # at a tie value 1 stays
    assert torch.equal(truncate_bits(tie, 0, 0.6), tie)  # 0.5 > 0.4: both stay


def test_top_k_over_two_values():
    logits = torch.tensor([0.3, -0.2]).view(1, 1, 1, 2)
    assert truncate_bits(logits, 1, 0.0)[0, 0, 0].tolist() == [pytest.approx(0.3), float("-inf")]
    assert torch.equal(truncate_bits(logits, 2, 0.0), logits)
    assert torch.equal(truncate_bits(logits, 900, 0.0), logits)


def test_the_drawn_value_always_stays_in_the_set():
    raw = torch.tensor([0.0, 5.0]).view(1, 1, 1, 2)
    cut = truncate_bits(raw, 1, 0.0)
    kept = keep_drawn(cut, raw, torch.tensor([[[0]]]))
    assert torch.isfinite(token_logprobs(kept, torch.tensor([[[0]]]))).all()


def test_draws_follow_the_probabilities_and_the_seed():
    logits = torch.tensor([0.0, L3]).expand(1, 4000, 1, 2)  # p(1) = 3/4
    bits = draw_bits(logits, torch.Generator().manual_seed(0))
    assert bits.shape == (1, 4000, 1) and abs(bits.float().mean().item() - 0.75) < 0.03
    assert torch.equal(bits, draw_bits(logits, torch.Generator().manual_seed(0)))


def test_pack_and_unpack_bits():
    bits = torch.tensor([[[1, 0, 1], [0, 1, 1]]])
    assert pack_bits(bits).tolist() == [[5, 3]]
    wide = torch.randint(0, 2, (2, 7, 56))
    assert torch.equal(unpack_bits(pack_bits(wide), 56), wide)


def test_cfg_insertion_layer_is_validated():
    assert SamplerConfig(cfg_insertion_layer=-5).cfg_insertion_layer == -5
    with pytest.raises(SamplerConfigError, match="cfg_insertion_layer"):
        SamplerConfig(cfg_insertion_layer=1)
