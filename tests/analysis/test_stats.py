from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from sublearn.analysis.stats import (
    MAX_EXACT_SIGN_FLIP,
    difference,
    holm,
    mean_ci,
    one_sided_t,
    paired_difference,
    permutation_p,
    permutation_test,
    rank_of,
)


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
    assert d.diff.excludes(0) and d.t_p < 1e-6 and d.permutation_p < 0.01
    same = difference(rng.normal(0, 1, 5), rng.normal(0, 1, 5))
    assert not same.diff.excludes(0)


def test_exact_permutation_p():
    # All 3 in a above all 3 in b: only 2 of the 20 splits are as extreme (two-sided).
    assert permutation_p([4, 5, 6], [1, 2, 3]) == pytest.approx(2 / 20)


def test_welch_keeps_its_results_json_keys():
    d = difference([1.0, 2.0, 3.0], [0.0, 0.5, 1.0]).to_dict()
    assert d["method"] == "welch" and d["exact"] and d["resamples"] == 20
    assert {"diff", "welch_p", "permutation_p"} <= d.keys()


def test_paired_matches_scipy_ttest_rel():
    rng = np.random.default_rng(1)
    a = rng.normal(0.5, 1.0, 7)
    b = a - rng.normal(0.3, 0.2, 7)
    d = paired_difference(a, b)
    ref = sps.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert d.method == "paired" and d.diff.n == 7
    assert d.diff.mean == pytest.approx(float(np.mean(a - b)))
    assert d.t_p == pytest.approx(ref.pvalue, rel=1e-9)
    assert (d.diff.low, d.diff.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert d.to_dict()["paired_p"] == d.t_p


def test_exact_sign_flip_p_by_hand():
    # Differences 1, 2, -0.5 sum to 2.5. Of the 8 sign patterns, the sums are
    # +-3.5, +-2.5, +-1.5, +-0.5: |sum| >= 2.5 for 4 of them, so p = 4/8.
    d = paired_difference([1.0, 2.0, -0.5], [0.0, 0.0, 0.0])
    assert d.exact and d.resamples == 8
    assert d.permutation_p == pytest.approx(4 / 8)
    # All positive: only the observed pattern and its mirror are as extreme, 2/2^n.
    assert paired_difference([5, 6, 7, 8], [1, 1, 1, 1]).permutation_p == pytest.approx(2 / 16)


def test_sign_flip_counts_ties_despite_rounding():
    # 0.1 + 0.2 and 0.3 are equal in exact arithmetic, not in floating point.
    d = paired_difference([0.1, 0.2, 0.3], [0.0, 0.0, 0.6])
    # Differences 0.1, 0.2, -0.3 sum to 0: every pattern is as extreme.
    assert d.permutation_p == 1.0


def test_sign_flip_goes_monte_carlo_past_the_exact_limit():
    rng = np.random.default_rng(2)
    n = MAX_EXACT_SIGN_FLIP + 5
    a = rng.normal(0.0, 1.0, n)
    shifted = paired_difference(a + 1.0, a, n_resamples=2000)
    assert not shifted.exact and shifted.resamples == 2000
    # The smallest Monte-Carlo p: no draw as extreme as the observed one.
    assert shifted.permutation_p == pytest.approx(1 / 2001)
    noise = rng.normal(0.0, 1.0, n)
    once = paired_difference(noise, np.zeros(n), n_resamples=2000, seed=3)
    again = paired_difference(noise, np.zeros(n), n_resamples=2000, seed=3)
    assert once.permutation_p == again.permutation_p > 0.01


def test_paired_is_narrower_than_welch_when_seeds_are_correlated():
    # Each seed moves both arms by the same large amount; the arms differ by about 0.1.
    rng = np.random.default_rng(4)
    seed_effect = rng.normal(0.0, 1.0, 5)
    a = seed_effect + 0.1 + rng.normal(0.0, 0.01, 5)
    b = seed_effect + rng.normal(0.0, 0.01, 5)
    welch, paired = difference(a, b), paired_difference(a, b)
    assert paired.diff.mean == pytest.approx(welch.diff.mean)
    width = lambda d: d.diff.high - d.diff.low
    assert width(paired) < width(welch) / 20
    assert paired.diff.excludes(0) and not welch.diff.excludes(0)


def test_paired_edge_cases():
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_difference([], [])
    one = paired_difference([1.0], [0.0])
    assert math.isinf(one.diff.high) and one.t_p == 1.0
    same = paired_difference([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])
    assert same.diff.low == same.diff.high == pytest.approx(0.5) and same.t_p == 0.0


def test_rank_of():
    assert rank_of("owl", {"owl": 0.3, "fox": 0.1, "cat": -0.2}) == 1
    assert rank_of("cat", {"owl": 0.3, "fox": 0.1, "cat": -0.2}) == 3
    with pytest.raises(KeyError):
        rank_of("dog", {"owl": 0.0})


# The rows' one-sided test (the audit's) and Holm's correction.
def test_permutation_test_finds_a_shift_and_only_it():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(300, 4))
    data[:, 0] += 0.5
    t = permutation_test(data, rng.normal(size=(200, 4)), 2000)
    assert t.p[0] == pytest.approx(1 / 2001) and t.z[0] > 4
    assert (t.p[1:] > 0.01).all() and np.all((0 < t.p) & (t.p <= 1))


def test_permutation_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(1)
    p = permutation_test(rng.normal(size=(60, 400)), rng.normal(size=(60, 400)), 500).p
    assert abs(np.mean(p < 0.05) - 0.05) < 0.04 and abs(np.mean(p) - 0.5) < 0.06


def test_holm():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    assert holm(p).tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
    q = np.random.default_rng(2).uniform(size=50)
    adj = holm(q)
    assert np.all(adj >= q) and np.all(adj <= 1)


def test_drawn_relabellings_approach_every_relabelling():
    # One mechanism counts both: every one of the C(16, 8) = 12,870 relabellings when the
    # budget allows, else seeded draws, whose p is within 4 binomial sd of the exact one.
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.8, 1, 8), rng.normal(0, 1, 8)
    exact = permutation_p(a, b, n_resamples=20_000)
    drawn = permutation_p(a, b, n_resamples=4000)
    assert 0 < exact < 1
    assert abs(drawn - exact) < 4 * math.sqrt(exact * (1 - exact) / 4000)


def test_the_rows_test_needs_two_rows_a_side():
    from sublearn.errors import SublearnError

    with pytest.raises(SublearnError, match="at least 2 rows on each side"):
        permutation_test(np.ones(5), np.ones(1), 100)


def test_one_sided_t_agrees_with_scipy_and_handles_degenerate_units() -> None:
    x = [0.3, 0.1, 0.25, -0.05, 0.2]
    assert one_sided_t(x) == pytest.approx(
        sps.ttest_1samp(x, 0, alternative="greater").pvalue, rel=1e-12)
    assert one_sided_t([-v for v in x]) > 0.95  # one-sided: the other way is no evidence
    assert one_sided_t([0.2, 0.2, 0.2]) == 0.0 and one_sided_t([0.0, 0.0]) == 1.0
    assert one_sided_t([5.0]) == 1.0  # one unit proves nothing
