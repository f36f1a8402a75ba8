"""Honest statistics over seeds: intervals, Welch and paired differences, permutation tests,
ranks.

Everything takes plain sequences of per-seed (or per-model) values; nothing here knows
about models or experiments, so the numbers experiment and the auxiliary-logit toy share it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats as _sps  # scipy ships with scikit-learn


@dataclass(frozen=True)
class Interval:
    """Mean with a two-sided t interval over independent values."""

    mean: float
    low: float
    high: float
    n: int
    std: float

    def excludes(self, value: float = 0.0) -> bool:
        return not (self.low <= value <= self.high)

    def fmt(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval for the mean. One value gives an infinite interval, not a false one."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1, 0.0)
    std = float(x.std(ddof=1))
    half = float(_sps.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std)


@dataclass(frozen=True)
class Difference:
    """a - b: an interval for the difference, a t-test p-value and a permutation p-value.

    `method` says which design the numbers assume:
    - "welch": two independent groups (Welch interval and t test, relabelling permutations);
    - "paired": one value per unit (student seed) in each group, compared unit by unit (t
      interval of the per-unit differences, paired t test, sign-flip permutations).
    `resamples` is how many relabellings the permutation p-value counted: every one of them
    when `exact`, otherwise that many seeded Monte-Carlo draws.
    """

    method: Literal["welch", "paired"]
    diff: Interval
    t_p: float
    permutation_p: float
    resamples: int
    exact: bool

    def to_dict(self) -> dict[str, object]:
        # The t test's p-value is stored as "welch_p" or "paired_p": "welch_p" is the key that
        # readers of results.json (results.show, the auxlogit toy, older run folders) know.
        return {
            "method": self.method,
            "diff": self.diff.to_dict(),
            f"{self.method}_p": self.t_p,
            "permutation_p": self.permutation_p,
            "resamples": self.resamples,
            "exact": self.exact,
        }


def _t_test(d: float, se: float, dof: float, level: float) -> tuple[float, float]:
    """Half-width of the interval and two-sided p-value for an estimate d with standard error se.

    A zero standard error (identical values) is certainty, not a division by zero; an
    infinite one (a group of one) gives an infinite interval, not a false one.
    """
    if math.isfinite(se) and se > 0:
        return (float(_sps.t.ppf(0.5 + level / 2, dof)) * se,
                float(2 * _sps.t.sf(abs(d) / se, dof)))
    if se == 0:
        return 0.0, (1.0 if d == 0 else 0.0)
    return math.inf, 1.0


def difference(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, seed: int = 0
) -> Difference:
    """Compare two independent groups of per-seed values (treated vs control, say)."""
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(xa), len(xb)
    if na == 0 or nb == 0:
        raise ValueError("difference needs values in both groups")
    d = float(xa.mean() - xb.mean())
    va = xa.var(ddof=1) / na if na > 1 else math.inf
    vb = xb.var(ddof=1) / nb if nb > 1 else math.inf
    se = math.sqrt(va + vb)
    dof = math.nan
    if math.isfinite(se) and se > 0:
        # Welch-Satterthwaite degrees of freedom.
        dof = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    half, welch_p = _t_test(d, se, dof, level)
    interval = Interval(d, d - half, d + half, na + nb, float(se) if math.isfinite(se) else 0.0)
    p, resamples, exact = _permutation(xa, xb, 10_000, seed)
    return Difference("welch", interval, welch_p, p, resamples, exact)


def paired_difference(
    a: Sequence[float], b: Sequence[float], level: float = 0.95,
    n_resamples: int = 10_000, seed: int = 0,
) -> Difference:
    """Compare two groups unit by unit: a[i] and b[i] share unit i (the same student seed).

    Arms that share a seed share its initialisation, subsample and data order, so much of
    their seed-to-seed spread cancels in a[i] - b[i]; a paired interval keeps that precision
    where Welch's throws it away. The permutation p-value flips the sign of each unit's
    difference (under "no effect" a and b are exchangeable within a unit): exact over all
    2^n sign patterns for n <= 20, else `n_resamples` seeded Monte-Carlo draws. With n
    units the exact p-value is never below 2 / 2^n (0.25 for 3 seeds).
    """
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    if len(xa) != len(xb):
        raise ValueError(f"paired_difference needs one value per unit in each group, "
                         f"got {len(xa)} and {len(xb)}")
    if len(xa) == 0:
        raise ValueError("paired_difference needs at least one pair")
    dd = xa - xb
    iv = mean_ci(dd, level)
    n = len(dd)
    se = iv.std / math.sqrt(n) if n > 1 else math.inf
    _, t_p = _t_test(iv.mean, se, n - 1, level)
    p, resamples, exact = _sign_flip(dd, n_resamples, seed)
    return Difference("paired", iv, t_p, p, resamples, exact)


# Exact sign-flip enumeration up to 2^20 (about a million sums, 8 MB); Monte-Carlo beyond.
MAX_EXACT_SIGN_FLIP = 20


def _sign_flip(d: np.ndarray, n_resamples: int, seed: int) -> tuple[float, int, bool]:
    """Two-sided sign-flip p-value for mean(d) = 0: (p, relabellings counted, exact)."""
    n = len(d)
    observed = abs(float(d.sum()))
    # Sums of the same numbers in another order differ by rounding only: count them as ties.
    tol = 1e-9 * float(np.abs(d).sum())
    if n <= MAX_EXACT_SIGN_FLIP:
        # Every sign pattern's sum, built one unit at a time: each step doubles the list.
        sums = np.zeros(1)
        for x in d:
            sums = np.concatenate([sums + x, sums - x])
        return float(np.mean(np.abs(sums) >= observed - tol)), len(sums), True
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_resamples, n))
    hits = int(np.sum(np.abs(signs @ d) >= observed - tol))
    # (hits + 1) / (draws + 1): the observed pattern counts as one draw, so p is never 0.
    return (hits + 1) / (n_resamples + 1), n_resamples, False


def permutation_p(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided permutation p-value for a difference of means; exact when feasible."""
    return _permutation(np.asarray(a, float), np.asarray(b, float), n_resamples, seed)[0]


def _permutation(xa: np.ndarray, xb: np.ndarray, n_resamples: int,
                 seed: int) -> tuple[float, int, bool]:
    """(p, relabellings counted, exact) for two independent groups."""
    pooled = np.concatenate([xa, xb])
    na, n = len(xa), len(pooled)
    observed = abs(xa.mean() - xb.mean())
    if math.comb(n, na) <= n_resamples:
        hits = total = 0
        for idx in itertools.combinations(range(n), na):
            mask = np.zeros(n, bool)
            mask[list(idx)] = True
            total += 1
            hits += abs(pooled[mask].mean() - pooled[~mask].mean()) >= observed - 1e-12
        return float(hits / total), total, True
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_resamples):
        perm = rng.permutation(pooled)
        hits += abs(perm[:na].mean() - perm[na:].mean()) >= observed - 1e-12
    return float((hits + 1) / (n_resamples + 1)), n_resamples, False


def rank_of(target: str, movement: Mapping[str, float]) -> int:
    """1-based rank of `target` when options are sorted by how much they moved, largest first."""
    if target not in movement:
        raise KeyError(f"{target!r} is not among the options {sorted(movement)}")
    ordered = sorted(movement, key=lambda k: (-movement[k], k))
    return ordered.index(target) + 1
