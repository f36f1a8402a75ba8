from __future__ import annotations

import math

import numpy as np
import pytest

from sublearn.stats import difference, mean_ci, permutation_p, rank_of


def test_mean_ci_matches_t_interval():
    iv = mean_ci([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.3027; sd = 1; half = 4.3027 / sqrt(3)
    assert iv.mean == 2.0
    assert iv.high - iv.mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert iv.n == 3


def test_single_value_gives_no_false_precision():
    iv = mean_ci([0.3])
    assert math.isinf(iv.low) and math.isinf(iv.high)


def test_difference_detects_a_real_shift_and_not_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.1, 8)
    b = rng.normal(0.0, 0.1, 8)
    d = difference(a, b)
    assert d.diff.excludes(0) and d.welch_p < 1e-6 and d.permutation_p < 0.01
    same = difference(rng.normal(0, 1, 5), rng.normal(0, 1, 5))
    assert not same.diff.excludes(0)


def test_exact_permutation_p():
    # All 3 in a above all 3 in b: only 2 of the 20 splits are as extreme (two-sided).
    assert permutation_p([4, 5, 6], [1, 2, 3]) == pytest.approx(2 / 20)


def test_rank_of():
    assert rank_of("owl", {"owl": 0.3, "fox": 0.1, "cat": -0.2}) == 1
    assert rank_of("cat", {"owl": 0.3, "fox": 0.1, "cat": -0.2}) == 3
    with pytest.raises(KeyError):
        rank_of("dog", {"owl": 0.0})
