"""The paired held-out change, by hand."""

import math

import numpy as np
import pytest

from varrl.eval.paired import paired_change

nan = float("nan")


def test_one_noise_seed_is_the_mean_difference_with_its_standard_error():
    # d = [1, 0, 2]: mean 1, std 1 -> s.e. 1 / sqrt(3)
    assert paired_change(np.array([[1.0, 2, 3]]), np.array([[2.0, 2, 5]])) == pytest.approx((1.0, 1 / math.sqrt(3), 3))


def test_noise_seeds_average_per_prompt_and_nan_pairs_drop_out():
    start = np.array([[1.0, nan, 3], [2, 1, 1]])
    end = np.array([[2.0, 5, 5], [2, 1, nan]])
    # per prompt: mean(1, 0) = 0.5; 0 (seed 1 only); 2 (seed 0 only) -> change 2.5 / 3
    # deviations -1/3, -5/6, 7/6: sum of squares 13/6, / (3 * 2) -> s.e. sqrt(13/36)
    change, se, n = paired_change(start, end)
    assert (change, se, n) == pytest.approx((2.5 / 3, math.sqrt(13 / 36), 3))
    # a prompt with no pair at all is dropped, not counted as 0
    assert paired_change(np.array([[1.0, 2, nan]]), np.array([[2.0, 2, 7]]))[2] == 2


def test_weighted_change_is_the_pooled_ratio():
    # words right 1 -> 2, 0 -> 0, 2 -> 2 out of 2, 1, 2 words: change 1 / 5 = 0.2
    # residuals d - 0.2 w = 0.6, -0.2, -0.4: sum of squares 0.56, / 6, sqrt, * 3 / 5
    change, se, n = paired_change(np.array([[1.0, 0, 2]]), np.array([[2.0, 0, 2]]), np.array([2.0, 1, 2]))
    assert (change, se, n) == pytest.approx((0.2, math.sqrt(0.56 / 6) * 3 / 5, 3))


def test_bad_shapes_and_too_few_prompts_are_named():
    with pytest.raises(ValueError, match="one shape"):
        paired_change(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="at least 2 prompts"):
        paired_change(np.array([[1.0, nan]]), np.array([[2.0, 3]]))
