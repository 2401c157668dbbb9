"""The paper's pieces as pure functions, against numbers worked out by hand: VMR soft value and
stage split, PANW weights, mask propagation, the alternation schedule."""

import math

import pytest
import torch

from varrl.algorithms.grpo import aggregate
from varrl.algorithms.masks import batch_step_masks, boxes_to_mask, coverage, propagate
from varrl.algorithms.panw import effective_step_share, step_weights
from varrl.algorithms.stages import parse_alternation, stage_at, stage_plan
from varrl.algorithms.vmr import soft_value, stage_steps


def test_soft_value_by_hand():
    # K = 2, eta = 1: V = log((e^0 + e^1)/2) = log(1.8591409) = 0.6201145
    v = soft_value(torch.tensor([[0.0, 1.0]], dtype=torch.float64), eta=1.0)
    assert v.item() == pytest.approx(math.log((1 + math.e) / 2))
    # Equal rewards: V = that reward, for any eta.
    assert soft_value(torch.tensor([[0.7, 0.7, 0.7]]), eta=0.3).item() == pytest.approx(0.7, abs=1e-6)
    # eta = 0.5, rewards 0 and 1: 0.5 * log((1 + e^2)/2) = 0.5 * log(4.1945280) = 0.7168758
    assert soft_value(torch.tensor([[0.0, 1.0]]), eta=0.5).item() == pytest.approx(0.5 * math.log((1 + math.e**2) / 2),
                                                                                  rel=1e-6)


def test_soft_value_limits_and_stability():
    r = torch.tensor([[0.2, 0.6, 1.0]], dtype=torch.float64)
    # eta -> large: the mean (0.6); eta -> small: the max (1.0).
    assert soft_value(r, eta=1e6).item() == pytest.approx(0.6, abs=1e-6)
    assert soft_value(r, eta=1e-4).item() == pytest.approx(1.0 - 1e-4 * math.log(3), abs=1e-9)
    # Rewards far apart: a naive exp(1000) overflows; here V = 1000 - log 2.
    far = soft_value(torch.tensor([[1000.0, -1000.0]], dtype=torch.float64), eta=1.0)
    assert far.item() == pytest.approx(1000 - math.log(2))
    # NaN rewards are left out; an all-NaN row is NaN.
    v = soft_value(torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")]]), eta=1.0)
    assert v[0].item() == pytest.approx(1.0) and math.isnan(v[1].item())
    with pytest.raises(ValueError, match="eta"):
        soft_value(r, eta=0)


def test_stage_split_at_m():
    # T = 9 grids, m = 6: the prefix generates grids 1..6 (0-based steps 0..5), the suffix 7..9.
    prefix, suffix = stage_steps(9, 6)
    assert prefix == [0, 1, 2, 3, 4, 5] and suffix == [6, 7, 8]
    assert stage_steps(3, 1) == ([0], [1, 2])
    for bad in (0, 9):
        with pytest.raises(ValueError, match="1..8"):
            stage_steps(9, bad)


def test_panw_weights_for_a_three_step_schedule():
    # Grids 1x1, 2x2, 4x4: n = 1, 4, 16. alpha = 0.5: k = 1, 1/2, 1/4.
    n = [1, 4, 16]
    assert step_weights(n, 0.5) == pytest.approx([1.0, 0.5, 0.25])
    assert step_weights(n, None) == [1.0, 1.0, 1.0]
    # Shares k*n / sum(k*n): alpha 0 -> 1/21, 4/21, 16/21; alpha 0.5 -> 1/7, 2/7, 4/7; alpha 1 -> 1/3 each.
    assert effective_step_share(n, 0) == pytest.approx([1 / 21, 4 / 21, 16 / 21])
    assert effective_step_share(n, 0.5) == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    assert effective_step_share(n, 1.0) == pytest.approx([1 / 3, 1 / 3, 1 / 3])


def test_panw_changes_the_balance_not_the_scale():
    # Every token term equal to c: the loss is c whatever alpha is.
    n = [1, 4, 16]
    terms = [torch.full((2, k), 0.3) for k in n]
    for alpha in (None, 0.6, 0.8, 1.0, 1.2):
        assert aggregate(terms, step_weights(n, alpha)).tolist() == pytest.approx([0.3, 0.3])
    # Only the first step carries 1 (others 0): alpha 0.5 -> 1*1 / (1 + 2 + 4) = 1/7.
    terms = [torch.ones(1, 1), torch.zeros(1, 4), torch.zeros(1, 16)]
    assert aggregate(terms, step_weights(n, 0.5)).item() == pytest.approx(1 / 7)


def test_boxes_to_mask():
    # 128 px image, 16x16 grid (8 px cells). Box x 10..30, y 0..8: columns 1..3, row 0.
    m = boxes_to_mask([(10, 0, 30, 8)], (128, 128), (16, 16))
    assert m.sum().item() == 3 and m[0, 1:4].all()
    # A box edge exactly on a cell border does not take the next cell: x 8..16 is column 1 only.
    assert boxes_to_mask([(8, 8, 16, 16)], (128, 128), (16, 16)).nonzero().tolist() == [[1, 1]]
    # Dilation 1 grows a single cell to 3x3.
    assert boxes_to_mask([(8, 8, 16, 16)], (128, 128), (16, 16), dilation=1).sum().item() == 9
    assert not boxes_to_mask([], (128, 128), (16, 16)).any()


def test_propagation_max_and_area():
    # 4x4 fine mask with one on-cell at (0, 0).
    fine = torch.zeros(4, 4, dtype=torch.bool)
    fine[0, 0] = True
    # To 2x2: the coarse cell (0, 0) holds 4 fine cells, one on -> coverage 1/4.
    assert coverage(fine, (2, 2)).tolist() == [[0.25, 0.0], [0.0, 0.0]]
    mx, area = propagate(fine, [(2, 2)], "max")[0], propagate(fine, [(2, 2)], "area", 0.5)[0]
    assert mx.tolist() == [[True, False], [False, False]] and not area.any()
    assert propagate(fine, [(2, 2)], "area", 0.25)[0].tolist() == [[True, False], [False, False]]
    # To 3x3 (non-dividing): fine cell 0 spans [0, 3) of 12 units, coarse cell 0 spans [0, 4):
    # coverage (3*3)/(4*4) = 9/16; coarse cell 1 [4, 8) does not touch it.
    cov = coverage(fine, (3, 3))
    assert cov[0, 0].item() == pytest.approx(9 / 16) and cov.sum().item() == pytest.approx(9 / 16)
    # A fine cell straddling two coarse cells: fine (1, 1) spans [3, 6) -> coarse 0 gets 1 unit, coarse 1 gets 2.
    fine2 = torch.zeros(4, 4, dtype=torch.bool)
    fine2[1, 1] = True
    cov2 = coverage(fine2, (3, 3))
    assert cov2[0, 0].item() == pytest.approx(1 / 16) and cov2[1, 1].item() == pytest.approx(4 / 16)
    assert propagate(fine2, [(3, 3)], "max")[0].sum().item() == 4
    # The 1x1 grid is on whenever anything is; the finest grid keeps the mask itself.
    grids = [(1, 1), (2, 2), (4, 4)]
    out = propagate(fine, grids)
    assert out[0].item() and torch.equal(out[2], fine)


def test_batch_masks_keep_everything_without_boxes():
    grids = [(1, 1), (2, 2), (4, 4)]
    masks = batch_step_masks([[(0, 0, 8, 8)], [], None], (32, 32), grids)
    assert [tuple(m.shape) for m in masks] == [(3, 1), (3, 4), (3, 16)]
    assert masks[2][0].sum().item() == 1 and masks[1][0].tolist() == [1, 0, 0, 0]
    assert masks[2][1].sum().item() == 16 and masks[2][2].sum().item() == 16


def test_alternation_schedules():
    assert "".join(s[0].upper() for s in stage_plan("fine", 8)) == "PPPSPPPS"
    assert "".join(s[0].upper() for s in stage_plan("coarse", 8)) == "PPPPPPSS"
    assert "".join(s[0].upper() for s in stage_plan("1:2", 6)) == "PSSPSS"
    # Resume mid-pattern: the stage of update 6 depends only on its index.
    assert stage_at(6, "fine", 100) == "prefix" and stage_at(7, "fine", 100) == "suffix"
    assert parse_alternation("2:0") == ("cycle", 2, 0)
    for bad in ("PPPS", "3-1", "0:0"):
        with pytest.raises(ValueError, match="alternation"):
            parse_alternation(bad)
