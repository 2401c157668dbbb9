"""The credit-assignment levers' pure math against numbers worked out by hand: leave-one-out
baselines, the std floor, per-scale Monte-Carlo advantages, per-word scores of the OCR reward and region credit."""

import math

import numpy as np
import pytest
import torch

from varrl.algorithms.grpo import clipped_policy_term, group_advantages
from varrl.algorithms.per_scale import per_scale_advantages, segment_returns, segments, step_advantages
from varrl.algorithms.region_credit import token_advantages, word_advantages
from varrl.ocr import OcrChar, OcrWord, line_characters
from varrl.rewards import CombinedReward, Reward, RewardResult
from varrl.rewards.base import WordScore
from varrl.rewards.text_ocr import letter_scores, text_ocr_terms, word_terms
from varrl.trainer.config import RlConfig
from varrl.trainer.credit import CreditInputs, advantages

NAN = float("nan")


# ---- leave-one-out baselines -------------------------------------------------------------------


def test_loo_advantages_by_hand():
    # Group 0: 1, 2, 6. The others' means: (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5 -> -3, -1.5, 4.5
    # (= 3/2 * (R - 3)). Group 1: 2, NaN, 4: the NaN row is out (A = 0), the others see one partner
    # each -> 2 - 4 = -2, 4 - 2 = +2. Group 2: a single valid row has no baseline -> 0.
    r = torch.tensor([1.0, 2.0, 6.0, 2.0, NAN, 4.0, 5.0, NAN])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    assert group_advantages(r, g, "loo").tolist() == [-3.0, -1.5, 4.5, -2.0, 0.0, 2.0, 0.0, 0.0]
    # Clipping applies after the baseline, as for the other norms; flat groups give 0.
    assert group_advantages(r[:3], g[:3], "loo", clip=2.0).tolist() == [-2.0, -1.5, 2.0]
    assert group_advantages(torch.tensor([3.0, 3.0]), torch.tensor([0, 0]), "loo").tolist() == [0.0, 0.0]


# ---- the std floor ------------------------------------------------------------------------------


def test_std_floor_by_hand():
    # Group 0: 2.00, 1.98 (mean 1.99, std 0.01: OCR jitter); group 1: 0.5, 1.5 (mean 1, std 0.5).
    # Plain group norm blows group 0 up to +-1 like group 1. With a floor of 0.1 group 0 divides
    # by 0.1 instead: +-0.01 / 0.1 = +-0.1; group 1's std is above the floor and keeps +-1.
    r = torch.tensor([2.0, 1.98, 0.5, 1.5])
    g = torch.tensor([0, 0, 1, 1])
    assert torch.allclose(group_advantages(r, g, "group", eps=0.0), torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    floored = group_advantages(r, g, "group", eps=0.0, std_floor=0.1)
    assert torch.allclose(floored, torch.tensor([0.1, -0.1, -1.0, 1.0]), atol=1e-5)
    # A floor of 0 is the plain std; a floor above every std is "none" divided by the floor.
    assert torch.equal(group_advantages(r, g, "group", std_floor=0.0), group_advantages(r, g, "group"))
    assert torch.allclose(group_advantages(r, g, "group", eps=0.0, std_floor=2.0),
                          group_advantages(r, g, "none") / 2.0)
    # "batch": the batch std of 2.0, 1.98, 0.5, 1.5 is about 0.612 > 0.1: unchanged; a floor of 1
    # divides by 1: the centred rewards.
    assert torch.equal(group_advantages(r, g, "batch", std_floor=0.1), group_advantages(r, g, "batch"))
    assert torch.allclose(group_advantages(r, g, "batch", eps=0.0, std_floor=1.0), group_advantages(r, g, "none"))
    # Region credit's word scores and per-scale segments take the same floor: word 0 scores 1.0
    # and 0.96 (std 0.02 -> +-0.02 / 0.1 = +-0.2).
    words = word_advantages([[1.0], [0.96]], torch.tensor([0, 0]), "group", std_floor=0.1)
    assert torch.allclose(torch.cat(words), torch.tensor([0.2, -0.2], dtype=torch.float64), atol=1e-3)
    seg = per_scale_advantages(torch.tensor([[1.0], [1.0]]), torch.tensor([2.0, 1.98]), torch.tensor([0, 0]),
                               "group", std_floor=0.1)
    assert torch.allclose(seg[:, 1], torch.tensor([0.1, -0.1]), atol=2e-3)


def test_trainer_advantages_take_the_configured_floor():
    rl = RlConfig(adv_std_floor=0.1)
    part = CreditInputs(torch.tensor([2.0, 1.98, 0.5, 1.5]), torch.tensor([0, 0, 1, 1]), None, None)
    adv = advantages([part], 0, None, rl, []).sample_B
    assert torch.allclose(adv, torch.tensor([0.1, -0.1, -1.0, 1.0]), atol=2e-3)


# ---- per-scale Monte-Carlo advantages ----------------------------------------------------------


def test_segments_of_the_splits():
    assert segments([1, 2], 4) == [[0], [1], [2, 3]]  # grids 1 | 2 | 3..4
    assert segments([4], 9) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]  # one split: VMR's prefix and suffix
    for bad in ([], [2, 2], [3, 2], [0, 2], [1, 4]):
        with pytest.raises(ValueError):
            segments(bad, 4)


def test_per_scale_advantages_by_hand():
    # Group 0, three samples, splits m1 < m2: values V(s_m1), V(s_m2) and final rewards R.
    #   V = [[1, 2], [2, 2], [0, 3]], R = [3, 1, 2]
    #   segment returns V1, V2 - V1, R - V2:  [1, 1, 1], [2, 0, -1], [0, 3, -1]
    #   (each row telescopes to R: 1+1+1 = 3, 2+0-1 = 1, 0+3-1 = 2)
    # Group 1, two samples; the first has no value at m1 (all its completions NaN):
    #   V = [[NaN, 1], [1, 1]], R = [1, 2] -> V1 = [NaN, 1], V2 - V1 = [NaN, 0], R - V2 = [0, 1]
    v = torch.tensor([[1.0, 2.0], [2.0, 2.0], [0.0, 3.0], [NAN, 1.0], [1.0, 1.0]])
    r = torch.tensor([3.0, 1.0, 2.0, 1.0, 2.0])
    g = torch.tensor([0, 0, 0, 1, 1])
    d = segment_returns(v, r)
    assert torch.allclose(d[:3], torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, -1.0], [0.0, 3.0, -1.0]]))
    assert math.isnan(d[3, 0]) and math.isnan(d[3, 1]) and d[3, 2] == 0.0 and d[4].tolist() == [1.0, 0.0, 1.0]
    # Centred per segment over the group (no scaling):
    #   segment 1: [1, 2, 0] - 1 (= V(s_0), the group mean of V(s_m1)) -> [0, 1, -1]
    #   segment 2: [1, 0, 3] - 4/3 -> [-1/3, -4/3, 5/3]
    #   segment 3: [1, -1, -1] + 1/3 -> [4/3, -2/3, -2/3]
    # Group 1: segments 1 and 2 have one valid row -> 0; segment 3: [0, 1] - 1/2 -> [-1/2, 1/2].
    a = per_scale_advantages(v, r, g, "none")
    expect = torch.tensor([[0.0, -1 / 3, 4 / 3], [1.0, -4 / 3, -2 / 3], [-1.0, 5 / 3, -2 / 3],
                           [0.0, 0.0, -0.5], [0.0, 0.0, 0.5]])
    assert torch.allclose(a, expect, atol=1e-6)
    # "group" divides each segment by its own group std: segment 1 of group 0 has std sqrt(2/3).
    a_group = per_scale_advantages(v, r, g, "group")
    assert torch.allclose(a_group[:3, 0], torch.tensor([0.0, 1.0, -1.0]) / (math.sqrt(2 / 3) + 1e-4), atol=1e-6)
    # One segment per trained step: splits [1, 2] of a 4-step schedule.
    per_step = step_advantages(expect, segments([1, 2], 4), [0, 1, 2, 3])
    assert [s.tolist() for s in per_step] == [expect[:, c].tolist() for c in (0, 1, 2, 2)]


# ---- per-word scores of the OCR reward -----------------------------------------------------------


def test_word_terms_by_hand():
    # Targets cat, dog; reads cat (0.9), dgo (0.8), cat (0.5).
    #   cat: exact reads 0 and 2, Comp takes the weakest: 0.5 (read 2); Sim: LD 1 for reads 0 and 2,
    #        the tie goes to the higher confidence: 1 * 0.9 (read 0). Score 1.4, reads (0, 2).
    #   dog: no exact read, Comp 0; LD(dog, cat) = 0, LD(dog, dgo) = 1 - 2/3 = 1/3 -> Sim 0.8/3 (read 1).
    reads = [("cat", 0.9), ("DGO", 0.8), ("cat", 0.5)]
    w = word_terms(["cat", "DOG"], reads)
    assert [(t.word, t.reads) for t in w] == [("cat", (0, 2)), ("dog", (1,))]
    assert w[0].comp == 0.5 and w[0].sim == pytest.approx(0.9) and w[1].comp == 0.0
    assert w[1].sim == pytest.approx(0.8 / 3)
    # The image's Comp and Sim are the means over its words.
    t = text_ocr_terms(["cat dog"], reads)
    assert t["comp"] == pytest.approx(0.25) and t["sim"] == pytest.approx((0.9 + 0.8 / 3) / 2)
    # A closest read sharing nothing with the word (LD 0) decided nothing: no box for that word.
    assert word_terms(["xyz"], [("abc", 0.9)])[0].reads == () and word_terms(["xyz"], [])[0].sim == 0.0


def _read(text: str, confs: list[float]) -> OcrWord:
    """A read whose character k has confidence confs[k] and the box (k, 0, k + 1, 1)."""
    return OcrWord(text, 0.5, (0, 0, len(text), 1),
                   tuple(OcrChar(c, s, (k, 0, k + 1, 1)) for k, (c, s) in enumerate(zip(text, confs))))


def test_letter_scores_by_hand():
    # "open" read as "OPFN": o, p, n match (their characters' confidences), e is read as f: 0, but
    # the f's box is where the e was drawn.
    got = letter_scores("OPEN", _read("OPFN", [0.9, 0.8, 0.7, 0.6]))
    assert [(c.word, c.score, c.boxes) for c in got] == [
        ("o", 0.9, [(0, 0, 1, 1)]), ("p", 0.8, [(1, 0, 2, 1)]), ("e", 0.0, [(2, 0, 3, 1)]), ("n", 0.6, [(3, 0, 4, 1)])]
    # "cafe" read as "cfe": the a is missing (0, no box); f and e take read characters 1 and 2.
    got = letter_scores("cafe", _read("cfe", [0.9, 0.8, 0.7]))
    assert [(c.score, c.boxes) for c in got] == [(0.9, [(0, 0, 1, 1)]), (0.0, []), (0.8, [(1, 0, 2, 1)]),
                                                 (0.7, [(2, 0, 3, 1)])]
    # "ab" read as "xaby": the extra characters score nothing; a and b keep their own.
    assert [(c.score, c.boxes) for c in letter_scores("ab", _read("xaby", [0.1, 0.2, 0.3, 0.4]))] == [
        (0.2, [(1, 0, 2, 1)]), (0.3, [(2, 0, 3, 1)])]
    # No characters from the engine: matched letters score the read's confidence, without boxes.
    assert [(c.score, c.boxes) for c in letter_scores("ab", OcrWord("aX", 0.5, (0, 0, 1, 1)))] == [(0.5, []), (0.0, [])]
    # Nothing read: every letter 0, no boxes; confidences are clipped to [0, 1].
    assert [(c.word, c.score, c.boxes) for c in letter_scores("ab", None)] == [("a", 0.0, []), ("b", 0.0, [])]
    assert letter_scores("a", _read("a", [1.0001]))[0].score == 1.0


def test_line_characters_follow_the_line_s_words():
    quad = [[0, 0], [2, 0], [2, 5], [0, 5]]
    chars = line_characters(["ab", "c"], [("a", 0.9, quad), ("b", 0.8, quad), ("c", 0.7, quad)])
    assert chars == [OcrChar("a", 0.9, (0, 0, 2, 5)), OcrChar("b", 0.8, (0, 0, 2, 5)), OcrChar("c", 0.7, (0, 0, 2, 5))]
    # Characters that do not spell the line one for one pair no letter with a box.
    assert line_characters(["ab", "c"], [("a", 0.9, quad), ("bc", 0.8, quad)]) == []
    assert line_characters(["ab"], [("a", 0.9, quad)]) == [] and line_characters(["ab"], None) == []


class _Words(Reward):
    name = "words"
    per_word = True

    def __call__(self, images_BHW3, prompts, meta):
        letters = (WordScore("c", 0.5, [(0, 0, 1, 4)]),)
        return RewardResult(np.array([1.0]), [[(0, 0, 4, 4)]], {}, None,
                            [[WordScore("cat", 1.5, [(0, 0, 4, 4)], letters)]])


class _Plain(Reward):
    name = "plain"

    def __call__(self, images_BHW3, prompts, meta):
        return RewardResult(np.array([0.5]))


def test_combined_reward_weights_the_word_scores():
    img = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    res = CombinedReward([(_Words(), 2.0), (_Plain(), 1.0)])(img, [""], [{}])
    assert res.scores.tolist() == [2.5]
    assert res.words == [[WordScore("cat", 3.0, [(0, 0, 4, 4)], (WordScore("c", 1.0, [(0, 0, 1, 4)]),))]]
    only_logged = CombinedReward([(_Words(), 0.0), (_Plain(), 1.0)])
    assert not only_logged.per_word and only_logged(img, [""], [{}]).words is None
    assert CombinedReward([(_Words(), 1.0)]).per_word and not CombinedReward([(_Plain(), 1.0)]).per_word


# ---- region credit -----------------------------------------------------------------------------


def test_word_advantages_by_hand():
    # Group 0 asks for two words: word 0 scores 1.0 and 0.0 (mean 0.5, std 0.5 -> +1, -1),
    # word 1 scores 0.2 and 0.6 (-> -1, +1). Group 1 has one row: no partner, 0.
    scores = [[1.0, 0.2], [0.0, 0.6], [0.7]]
    g = torch.tensor([0, 0, 1])
    adv = word_advantages(scores, g, "group")
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0], dtype=torch.float64), atol=1e-3)
    assert torch.allclose(adv[1], torch.tensor([-1.0, 1.0], dtype=torch.float64), atol=1e-3)
    assert adv[2].tolist() == [0.0]
    none = word_advantages(scores, g, "none")
    assert torch.allclose(torch.cat(none), torch.tensor([0.5, -0.2, -0.5, 0.2, 0.0], dtype=torch.float64))
    assert [a.numel() for a in word_advantages([[], []], torch.tensor([0, 0]))] == [0, 0]  # reward n/a


def test_token_advantages_by_hand():
    # A 4x4 px image, grids 1x1 and 2x2 (2 px cells). Word A (advantage +1) is read in the top-left
    # cell, word B (-0.5) in the bottom-right one; the image's own advantage is 0.2.
    boxes = [[[(0, 0, 2, 2)], [(2, 2, 4, 4)]]]
    word_adv = [torch.tensor([1.0, -0.5], dtype=torch.float64)]
    image = torch.tensor([0.2])
    grids = [(1, 1), (2, 2)]
    fine, coarse = token_advantages(word_adv, boxes, image, (4, 4), grids, [1, 0])
    # 2x2 grid: A, outside, outside, B (row-major).
    assert torch.allclose(fine, torch.tensor([[1.0, 0.2, 0.2, -0.5]]))
    # 1x1 grid, max pooling: both words are on, each covers a quarter: (1/4 * 1 + 1/4 * -0.5) / (1/2) = 0.25.
    assert torch.allclose(coarse, torch.tensor([[0.25]]))
    # Area pooling at 0.5: a quarter is not enough, the 1x1 cell is outside every word -> the image's 0.2.
    assert torch.allclose(token_advantages(word_adv, boxes, image, (4, 4), grids, [0], "area", 0.5)[0],
                          torch.tensor([[0.2]]))
    # outside="mask": cells outside every word carry no policy gradient (advantage 0).
    masked = token_advantages(word_adv, boxes, image, (4, 4), grids, [1], outside="mask")[0]
    assert torch.allclose(masked, torch.tensor([[1.0, 0.0, 0.0, -0.5]]))
    # Dilation 1 grows A over the whole 2x2 grid and B too: the shared cells weigh both by coverage 1.
    grown = token_advantages(word_adv, boxes, image, (4, 4), grids, [1], dilation=1)[0]
    assert torch.allclose(grown, torch.full((1, 4), 0.25))
    # A sample none of whose words was read keeps its image advantage, even with outside="mask".
    unread = token_advantages([torch.tensor([1.0], dtype=torch.float64)], [[[]]], image, (4, 4), grids, [1],
                              outside="mask")[0]
    assert torch.allclose(unread, torch.full((1, 4), 0.2))


def test_token_advantages_in_the_clipped_term():
    # Per-token advantages: at ratio 1 the loss of a token is -A_token and its gradient -A_token;
    # a [B] advantage and the same value on every token give the very same numbers.
    logp = torch.zeros(1, 3, requires_grad=True)
    loss, _ = clipped_policy_term(logp, logp.detach(), torch.tensor([[1.0, -2.0, 0.5]]))
    loss.sum().backward()
    assert loss.tolist() == [[-1.0, 2.0, -0.5]] and logp.grad.tolist() == [[-1.0, 2.0, -0.5]]
    lp = torch.log(torch.tensor([[1.0, 1.5, 0.5]]))
    per_sample = clipped_policy_term(lp, torch.zeros(1, 3), torch.tensor([2.0]))
    per_token = clipped_policy_term(lp, torch.zeros(1, 3), torch.full((1, 3), 2.0))
    assert all(torch.equal(a, b) for a, b in zip(per_sample, per_token))
