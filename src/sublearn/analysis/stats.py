"""Honest statistics: intervals, Welch and paired differences, permutation tests, Holm's
correction, ranks.

Everything takes plain sequences of values (per seed, per model, per row); nothing here knows
about models or experiments, so the numbers experiment, the audit and the auxiliary-logit toy
share it. Every two-group permutation test counts relabellings with one mechanism (`_relabel`):
the seed comparisons' two-sided test (exact when feasible) and the rows' one-sided,
many-column test (`permutation_test`, the audit's).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from sublearn.errors import SublearnError


def _student_t() -> Any:
    """scipy's t distribution, imported when first needed: scipy.stats takes most of a second
    to import, and the command line's help reads modules that import this one."""
    from scipy import stats  # scipy ships with scikit-learn

    return stats.t


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
    half = float(_student_t().ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std)


def one_sided_t(values: Sequence[float]) -> float:
    """One-sided one-sample t-test p-value for mean(values) > 0 (paired differences, one per
    unit). Identical values are certainty either way; fewer than two values prove nothing."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return 1.0
    mean = float(x.mean())
    if np.all(x == x[0]):  # no spread (a computed std would be rounding noise, not zero)
        return 0.0 if mean > 0 else 1.0
    std = float(x.std(ddof=1))
    return float(_student_t().sf(mean / (std / math.sqrt(len(x))), len(x) - 1))


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
        t = _student_t()
        return float(t.ppf(0.5 + level / 2, dof)) * se, float(2 * t.sf(abs(d) / se, dof))
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
    """(p, relabellings counted, exact) for two independent groups: every relabelling when
    there are at most `n_resamples`, else that many seeded draws."""
    n, na = len(xa) + len(xb), len(xa)
    if math.comb(n, na) <= n_resamples:
        counted = _relabel(xa, xb, _every_relabelling(n, na), two_sided=True)
        return float(counted.hits[0] / counted.count), counted.count, True
    rng = np.random.default_rng(seed)
    counted = _relabel(xa, xb, _drawn_relabellings(n, na, n_resamples, rng, "rows"),
                       two_sided=True)
    return float((counted.hits[0] + 1) / (n_resamples + 1)), n_resamples, False


@dataclass(frozen=True)
class Permutation:
    """One-sided test of mean(data) > mean(reference), per column."""

    diff: np.ndarray  # observed difference of means
    se: np.ndarray  # Welch standard error of `diff`
    z: np.ndarray  # (diff - permutation mean) / permutation sd
    p: np.ndarray  # (1 + #{permuted >= observed}) / (1 + permutations)


def permutation_test(data: np.ndarray, reference: np.ndarray, permutations: int,
                     seed: int = 0, block: int = 256) -> Permutation:
    """Rows of data against rows of reference, one column per hypothesis (an audit's
    candidates): the data/reference labels shuffled over the pooled rows, `permutations`
    seeded draws; every column sees the same relabellings, as a joint test should."""
    data, reference = np.atleast_2d(data.T).T, np.atleast_2d(reference.T).T
    nd, nr = len(data), len(reference)
    if nd < 2 or nr < 2:
        raise SublearnError(f"a permutation test needs at least 2 rows on each side "
                            f"(data {nd}, reference {nr})")
    rng = np.random.default_rng(seed)
    counted = _relabel(data, reference,
                       _drawn_relabellings(nd + nr, nd, permutations, rng, "labels", block),
                       two_sided=False)
    mean = counted.sums / permutations
    sd = np.sqrt(np.maximum(counted.squares / permutations - mean ** 2, 0.0))
    se = np.sqrt(data.var(axis=0, ddof=1) / nd + reference.var(axis=0, ddof=1) / nr)
    z = np.where(sd > 0, (counted.observed - mean) / np.where(sd > 0, sd, 1.0), 0.0)
    return Permutation(counted.observed, se, z, (1 + counted.hits) / (1 + permutations))


# --- the one relabelling mechanism both tests count with ------------------------------------
@dataclass(frozen=True)
class _Counted:
    observed: np.ndarray  # [columns] mean(data) - mean(reference)
    hits: np.ndarray  # [columns] relabellings at least as extreme as observed
    sums: np.ndarray  # [columns] sum of the relabelled differences
    squares: np.ndarray  # [columns] sum of their squares
    count: int  # relabellings counted


def _relabel(data: np.ndarray, reference: np.ndarray, masks: Iterable[np.ndarray],
             two_sided: bool) -> _Counted:
    """Count relabellings, given as blocks of data masks [block, rows] (1.0: the row is in
    the data group) over the pooled rows, data first. Each block is one matrix product:
    [block, rows] @ [rows, columns]."""
    data, reference = np.atleast_2d(data.T).T, np.atleast_2d(reference.T).T
    nd, nr = len(data), len(reference)
    pooled = np.concatenate([data, reference])
    total = pooled.sum(axis=0)
    observed = data.mean(axis=0) - reference.mean(axis=0)
    # Sums of the same values in another order differ by rounding: count those as ties.
    bar = np.abs(observed) if two_sided else observed
    bar = bar - 1e-12 * (1 + np.abs(observed))
    hits, sums, squares, count = 0, 0.0, 0.0, 0
    for masks_block in masks:
        in_data = masks_block @ pooled
        diffs = in_data / nd - (total - in_data) / nr
        hits = hits + ((np.abs(diffs) if two_sided else diffs) >= bar).sum(axis=0)
        sums = sums + diffs.sum(axis=0)
        squares = squares + (diffs ** 2).sum(axis=0)
        count += len(masks_block)
    return _Counted(observed, np.asarray(hits), np.asarray(sums), np.asarray(squares), count)


def _drawn_relabellings(n: int, n_data: int, draws: int, rng: np.random.Generator,
                        how: Literal["labels", "rows"], block: int = 256) -> Iterator[np.ndarray]:
    """`draws` seeded relabellings, in blocks of data masks, each from one uniformly random
    permutation s of the rows. "labels": row k joins the data group when s(k) < n_data (the
    group labels shuffled over the rows); "rows": the rows s(0) .. s(n_data - 1) do (the rows
    shuffled, the first n_data taken). Both are uniform over relabellings; each test keeps the
    one it has always drawn, so the p-values it reported before reproduce."""
    done = 0
    while done < draws:
        b = min(block, draws - done)
        s = rng.permuted(np.tile(np.arange(n), (b, 1)), axis=1)
        position = s if how == "labels" else np.argsort(s, axis=1)
        yield (position < n_data).astype(float)
        done += b


def _every_relabelling(n: int, n_data: int, block: int = 256) -> Iterator[np.ndarray]:
    """Every choice of n_data rows of n as the data group, in blocks of data masks."""
    choices = itertools.combinations(range(n), n_data)
    while chunk := list(itertools.islice(choices, block)):
        masks = np.zeros((len(chunk), n))
        masks[np.arange(len(chunk))[:, None], np.array(chunk)] = 1.0
        yield masks


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down correction: controls the family-wise error rate like Bonferroni,
    never less powerful. Adjusted p-values are >= the raw ones and capped at 1."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def rank_of(target: str, movement: Mapping[str, float]) -> int:
    """1-based rank of `target` when options are sorted by how much they moved, largest first."""
    if target not in movement:
        raise KeyError(f"{target!r} is not among the options {sorted(movement)}")
    ordered = sorted(movement, key=lambda k: (-movement[k], k))
    return ordered.index(target) + 1
