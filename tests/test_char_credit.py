"""Character-level credit against numbers worked out by hand: letter alignment and boxes, per-letter
group advantages, cell coverage, per-token advantages, and the update's per-token path."""

import math

import pytest
import torch

from varrl.algorithms.char_credit import cell_coverage, mark_advantages, token_advantages
from varrl.algorithms.grpo import clipped_policy_term
from varrl.rewards.text_ocr import letter_marks, word_marks


def test_letter_marks_split_the_read_box_between_letters():
    # "filter" read as "ficter" in a box 0..60 px wide: letter c sits at [10c, 10c + 10).
    marks = letter_marks("filter", "ficter", (0.0, 4.0, 60.0, 20.0), word=1)
    assert [m[4] for m in marks] == [f"1:{c}" for c in range(6)]
    assert [m[5] for m in marks] == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert marks[2][:4] == (20.0, 4.0, 30.0, 20.0)


def test_letter_marks_deleted_and_inserted_letters():
    # "open" read as "opn": 'e' is deleted (value 0, no box); 'n' sits on read letter 2 of 3.
    marks = letter_marks("open", "opn", (0.0, 0.0, 30.0, 10.0), word=0)
    by_key = {m[4]: m for m in marks}
    assert by_key["0:2"] == (None, None, None, None, "0:2", 0.0)
    assert by_key["0:3"][:4] == (20.0, 0.0, 30.0, 10.0) and by_key["0:3"][5] == 1.0
    # An inserted read letter credits no target letter: "ab" read as "axb" keeps both, boxes 0 and 2 of 3.
    marks = letter_marks("ab", "axb", (0.0, 0.0, 30.0, 10.0), word=0)
    assert [(m[0], m[5]) for m in marks] == [(0.0, 1.0), (20.0, 1.0)]


def test_word_marks_pick_the_read_the_reward_credits():
    reads = [("shap", 0.9, (0.0, 0.0, 40.0, 10.0)), ("palace", 0.8, (0.0, 20.0, 60.0, 30.0))]
    marks = word_marks(["SHOP", "PALACE", "XYZ"], reads)
    values = {m[4]: m[5] for m in marks}
    assert values == {"0:0": 1.0, "0:1": 1.0, "0:2": 0.0, "0:3": 1.0,
                      "1:0": 1.0, "1:1": 1.0, "1:2": 1.0, "1:3": 1.0, "1:4": 1.0, "1:5": 1.0,
                      "2:0": 0.0, "2:1": 0.0, "2:2": 0.0}
    # "xyz" shares no letter with any read: no boxes.
    assert all(m[0] is None for m in marks if m[4].startswith("2:"))
    assert all(m[1] == 20.0 for m in marks if m[4].startswith("1:"))


def test_mark_advantages_by_hand():
    # One group of 3: letter "0:0" read right by samples 0 and 1, wrong by 2 -> values 1, 1, 0,
    # centred 1/3, 1/3, -2/3, std sqrt((1/9 + 1/9 + 4/9) / 3) = sqrt(2)/3.
    # Letter "0:1" right everywhere: no signal, no entry. Sample 2 has no mark for "0:2".
    marks = [[(0, 0, 1, 1, "0:0", 1.0), (0, 0, 1, 1, "0:1", 1.0), (0, 0, 1, 1, "0:2", 1.0)],
             [(0, 0, 1, 1, "0:0", 1.0), (0, 0, 1, 1, "0:1", 1.0), (0, 0, 1, 1, "0:2", 1.0)],
             [(0, 0, 1, 1, "0:0", 0.0), (0, 0, 1, 1, "0:1", 1.0)],
             [(0, 0, 1, 1, "0:0", 0.0)]]  # another group, alone: no signal
    adv = mark_advantages(marks, torch.tensor([5, 5, 5, 6]), eps=0.0)
    s = math.sqrt(2) / 3
    assert adv[0]["0:0"] == pytest.approx((1 / 3) / s) and adv[2]["0:0"] == pytest.approx((-2 / 3) / s)
    assert "0:1" not in adv[0] and adv[3] == {}
    # Sample 2 never read letter "0:2": it counts as 0 (its advantage is unused: it has no box).
    assert adv[1]["0:2"] == pytest.approx((1 / 3) / s) and adv[2]["0:2"] == pytest.approx((-2 / 3) / s)


def test_cell_coverage_by_hand():
    # A 16 x 16 image on a 2 x 4 grid (cells 8 tall, 4 wide); box x 2..6, y 0..4 covers half of
    # cell (0, 0)'s width and half its height -> 1/4, the same in cell (0, 1).
    cov = cell_coverage((2.0, 0.0, 6.0, 4.0), (16, 16), (2, 4))
    expected = torch.zeros(2, 4, dtype=torch.float64)
    expected[0, 0] = expected[0, 1] = 0.25
    assert torch.allclose(cov, expected)


def test_token_advantages_mix_letter_and_image_credit():
    # One sample, a 4 x 4 image. Letter "0:0" fills the left half (advantage -2), letter "0:1" the
    # top right quarter (no signal: covered, advantage 0); the image's advantage is 0.5.
    marks = [[(0.0, 0.0, 2.0, 4.0, "0:0", 0.0), (2.0, 0.0, 4.0, 2.0, "0:1", 1.0), (None, None, None, None, "0:2", 0.0)]]
    adv_key = [{"0:0": -2.0}]
    grids = [(1, 1), (2, 2)]
    out = token_advantages(marks, adv_key, torch.tensor([0.5]), (4, 4), grids, outside="image")
    # 1 x 1: half the cell is letter 0 (-2 * 0.5), a quarter letter 1 (0), a quarter outside (0.25 * 0.5).
    assert out[0][0].tolist() == [pytest.approx(-1.0 + 0.125)]
    # 2 x 2: row-major cells: (0,0) letter 0, (0,1) letter 1, (1,0) letter 0, (1,1) outside.
    assert out[1][0].tolist() == pytest.approx([-2.0, 0.0, -2.0, 0.5])
    zero = token_advantages(marks, adv_key, torch.tensor([0.5]), (4, 4), grids, outside="zero")
    assert zero[1][0].tolist() == pytest.approx([-2.0, 0.0, -2.0, 0.0])
    with pytest.raises(ValueError, match="outside"):
        token_advantages(marks, adv_key, torch.tensor([0.5]), (4, 4), grids, outside="nowhere")


def test_clipped_policy_term_takes_per_token_advantages():
    lp = torch.log(torch.tensor([[1.5, 1.0]]))  # ratios 1.5 and 1 against old log-probs 0
    old = torch.zeros(1, 2)
    per_token, _ = clipped_policy_term(lp, old, torch.tensor([[1.0, -2.0]]))
    # Token 0: min(1.5, 1.2) * 1 = 1.2 -> loss -1.2; token 1: ratio 1 * -2 -> loss 2.
    assert per_token[0].tolist() == pytest.approx([-1.2, 2.0])
    per_sample, _ = clipped_policy_term(lp, old, torch.tensor([1.0]))
    assert per_sample[0].tolist() == pytest.approx([-1.2, -1.0])


def test_update_with_broadcast_token_advantages_equals_the_per_sample_update(tmp_path):
    from tinymodel import build_tiny, write_model_dir

    from varrl.policy.load import load_policy
    from varrl.policy.sampler import SamplerConfig
    from varrl.trainer.config import RlConfig, TrainConfig
    from varrl.trainer.dist import DistInfo
    from varrl.trainer.update import UpdatePlan, policy_update

    write_model_dir(tmp_path / "m", *build_tiny())
    grads = {}
    adv = torch.tensor([1.0, -0.5, 0.25])
    for name in ("sample", "token", "half"):
        policy = load_policy(tmp_path / "m")
        traj = policy.rollout(["ab"], n=3, sampler=SamplerConfig(cfg=0), generator=torch.Generator().manual_seed(0))
        steps = list(range(policy.schedule.num_steps))
        n = policy.schedule.tokens_per_step
        token_adv = None
        if name != "sample":
            token_adv = [adv[:, None].expand(-1, n[t]).clone() for t in steps]
            if name == "half":
                token_adv[-1][:, : n[-1] // 2] = 0.0
        opt = torch.optim.SGD(policy.parameters(), lr=0.0)
        policy_update(policy, None, traj, adv, UpdatePlan(steps, token_adv=token_adv), RlConfig(kl_beta=0),
                      TrainConfig(grad_clip=0), opt, DistInfo())
        grads[name] = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    assert torch.allclose(grads["sample"], grads["token"], atol=1e-7)
    assert not torch.allclose(grads["sample"], grads["half"], atol=1e-6)
