"""Honest statistics over seeds: intervals, differences, permutation tests, ranks.

Everything takes plain sequences of per-seed (or per-model) values; nothing here knows
about models or experiments, so the numbers experiment and the auxiliary-logit toy share it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

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
    """a - b: Welch interval for the difference of means and two p-values."""

    diff: Interval
    welch_p: float
    permutation_p: float

    def to_dict(self) -> dict[str, object]:
        return {
            "diff": self.diff.to_dict(),
            "welch_p": self.welch_p,
            "permutation_p": self.permutation_p,
        }


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
    if math.isfinite(se) and se > 0:
        # Welch-Satterthwaite degrees of freedom.
        dof = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
        half = float(_sps.t.ppf(0.5 + level / 2, dof)) * se
        welch_p = float(2 * _sps.t.sf(abs(d) / se, dof))
    elif se == 0:
        half, welch_p = 0.0, (1.0 if d == 0 else 0.0)
    else:
        half, welch_p = math.inf, 1.0
    interval = Interval(d, d - half, d + half, na + nb, float(se) if math.isfinite(se) else 0.0)
    return Difference(interval, welch_p, permutation_p(xa, xb, seed=seed))


def permutation_p(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided permutation p-value for a difference of means; exact when feasible."""
    xa, xb = np.asarray(a, float), np.asarray(b, float)
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
        return float(hits / total)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_resamples):
        perm = rng.permutation(pooled)
        hits += abs(perm[:na].mean() - perm[na:].mean()) >= observed - 1e-12
    return float((hits + 1) / (n_resamples + 1))


def rank_of(target: str, movement: Mapping[str, float]) -> int:
    """1-based rank of `target` when options are sorted by how much they moved, largest first."""
    if target not in movement:
        raise KeyError(f"{target!r} is not among the options {sorted(movement)}")
    ordered = sorted(movement, key=lambda k: (-movement[k], k))
    return ordered.index(target) + 1
