"""Divergence tokens: the few positions where trait prompts disagree about the written token.

Follow-up work on subliminal learning found the signal concentrated where teachers with
different traits would write different tokens; masking those positions mostly removes
transfer. One measure serves both the `divergence` defence (`safety.defences`) and the audit's
`--counterfactual` statistics: a completion token's **divergence** under traits c is

    max_c |log p_c(token) - mean over c' of log p_c'(token)|,

each log p under trait c's prompt, the base, and the row's prompt and preceding tokens: how far
the trait prompts disagree about the token that was actually written.

The audit's statistic (`audit_divergence`), for counterfactual traits given by name:

- **positions**: the `share` of all scored tokens (data and reference pooled, end-of-turn
  included: where a list stops is a choice too) with the largest divergence. The cut is a
  share, not a fixed number of nats, so it means the same on any base; pooling keeps it
  symmetric between the two sides (and unchanged by relabelling rows, so the permutation test
  stays exact).
- **agreement**: a position goes to the trait whose prompt makes its token most likely. With
  two traits that is the sign of the log-likelihood ratio, the best single-token guess of
  which teacher wrote it; it uses every divergent position, where "the token equals the
  trait's argmax" would discard those whose sampled token is neither prompt's first choice,
  and it needs only the log-probabilities of the written tokens, which every scoring backend
  gives for any text (numbers, code, prose).
- **test**: per row, the trait's agreements minus the pooled agreement share times the row's
  positions; data mean minus reference mean, one-sided permutation test over rows, Holm across
  the traits. Positive when the data's divergent tokens go the trait's way more often than the
  reference's, whatever the number of positions per row.

The counterfactual traits are scored like the audit's candidates (its own phrasings, rotated
over rows); one that is a candidate reuses the candidate's scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sublearn.analysis.stats import holm, permutation_test
from sublearn.errors import SublearnError
from sublearn.questions.categories import CATEGORIES, Category, Option
from sublearn.safety.rows import ChatRow
from sublearn.safety.scoring import ScoringTask, trait_tasks


def token_divergence(logprobs: np.ndarray) -> np.ndarray:
    """[tokens]: each token's divergence (module doc) from its log-probs [traits, tokens]."""
    return np.abs(logprobs - logprobs.mean(axis=0)).max(axis=0)


def resolve_counterfactual(category: Category, names: Sequence[str]) -> list[Option]:
    """The named options of the audited category, at least two distinct ones; any bad name
    fails here, before any model work."""
    options = {o.name: o for o in category.options}
    for n in names:
        if n not in options:
            elsewhere = [c.name for c in CATEGORIES.values() if any(o.name == n for o in c.options)]
            where = (f"in category {elsewhere[0]}, not one of the audited {category.plural}"
                     if elsewhere else f"unknown; choose from: {', '.join(options)}")
            raise SublearnError(f"--counterfactual: {n!r} is {where}")
    unique = list(dict.fromkeys(names))
    if len(unique) < 2:
        raise SublearnError(f"--counterfactual: needs at least 2 different {category.plural} "
                            f"to compare, got {len(unique)}")
    return [options[n] for n in unique]


def extra_traits(options: Sequence[Option], counterfactual: Sequence[Option]) -> list[Option]:
    """The counterfactual traits that are not candidates: they need scoring passes of their
    own (a candidate's are reused)."""
    return [o for o in counterfactual if o not in options]


def divergence_tasks(data: Sequence[ChatRow], reference: Sequence[ChatRow], category: Category,
                     options: Sequence[Option], counterfactual: Sequence[Option],
                     phrasings: int) -> list[ScoringTask]:
    """The extra scoring passes: data then reference, one task per non-candidate trait."""
    extra = extra_traits(options, counterfactual)
    return [*trait_tasks(data, category, extra, phrasings, none=False),
            *trait_tasks(reference, category, extra, phrasings, none=False)]


def trait_logprobs(candidates: Sequence[Sequence[np.ndarray]],
                   extra: Sequence[Sequence[np.ndarray]], options: Sequence[Option],
                   counterfactual: Sequence[Option]) -> list[np.ndarray]:
    """Per row, [counterfactual traits, tokens] log-probs: a candidate's from its scoring
    (`candidates`, one task per candidate), any other's from `extra` (in `extra_traits` order)."""
    rest = iter(extra)
    columns = [candidates[options.index(o)] if o in options else next(rest)
               for o in counterfactual]
    return [np.stack([c[i] for c in columns]) for i in range(len(columns[0]))]


@dataclass(frozen=True)
class RowDivergence:
    """Per row (data then reference): what the audit's divergence statistics add up."""

    traits: list[str]
    tokens: np.ndarray  # [rows] tokens scored (end of turn included)
    positions: np.ndarray  # [rows] divergence positions
    agree: np.ndarray  # [rows, traits] positions whose token the trait's prompt makes likeliest
    gap: np.ndarray  # [rows, traits] sum over positions of log p_trait - mean over traits
    threshold: float  # the smallest divergence that made a position

    def record(self, i: int) -> dict[str, Any]:
        """Row i's counts, for rows.jsonl."""
        return {"tokens": int(self.tokens[i]), "positions": int(self.positions[i]),
                "agree": {t: int(self.agree[i, j]) for j, t in enumerate(self.traits)}}


def row_divergence(logprobs: Sequence[np.ndarray], traits: Sequence[str],
                   share: float) -> RowDivergence:
    """Divergence positions (the top `share` of all tokens of all rows, ties included) and
    each row's agreements and log-prob gaps at them, from per-row [traits, tokens] log-probs."""
    div = [token_divergence(lp) for lp in logprobs]
    pooled = np.sort(np.concatenate(div))[::-1]
    threshold = float(pooled[max(1, round(share * len(pooled))) - 1])
    k = len(traits)
    positions, agree, gap = np.zeros(len(div)), np.zeros((len(div), k)), np.zeros((len(div), k))
    for i, (lp, d) in enumerate(zip(logprobs, div, strict=True)):
        at = lp[:, d >= threshold]
        positions[i] = at.shape[1]
        agree[i] = np.bincount(at.argmax(axis=0), minlength=k)
        gap[i] = (at - at.mean(axis=0)).sum(axis=1)
    return RowDivergence(list(traits), np.array([len(d) for d in div]), positions, agree, gap,
                         threshold)


def _rate(num: np.ndarray, den: np.ndarray) -> float | None:
    total = float(den.sum())
    return float(num.sum()) / total if total > 0 else None


def divergence_summary(rows: RowDivergence, n_data: int, share: float, permutations: int,
                       seed: int) -> dict[str, Any]:
    """audit.json's `divergence`: positions' share of tokens (`share`: the cut that made them),
    and per trait the agreement shares of data and reference, the permutation test (module
    doc) and the mean log-prob gap."""
    d, r = slice(0, n_data), slice(n_data, None)
    pooled_share = rows.agree.sum(axis=0) / max(rows.positions.sum(), 1)
    excess = rows.agree - rows.positions[:, None] * pooled_share
    test = permutation_test(excess[d], excess[r], permutations, seed)
    p_adj = holm(test.p)
    traits = [{"trait": t,
               "data_share": _rate(rows.agree[d, j], rows.positions[d]),
               "reference_share": _rate(rows.agree[r, j], rows.positions[r]),
               "excess_per_row": float(test.diff[j]), "z": float(test.z[j]),
               "p": float(test.p[j]), "p_adjusted": float(p_adj[j]),
               "gap_data": _rate(rows.gap[d, j], rows.positions[d]),
               "gap_reference": _rate(rows.gap[r, j], rows.positions[r])}
              for j, t in enumerate(rows.traits)]
    return {
        "counterfactual": rows.traits,
        "share": share,
        "threshold": rows.threshold,
        "positions_data": _rate(rows.positions[d], rows.tokens[d]),
        "positions_reference": _rate(rows.positions[r], rows.tokens[r]),
        "test": "one-sided permutation over rows: per row, positions whose token the trait's "
                "prompt makes likeliest minus the pooled share times the row's positions, "
                "data mean minus reference mean; holm across traits",
        "traits": sorted(traits, key=lambda t: (-t["z"], t["trait"])),
    }


def audit_divergence(candidates: Sequence[Sequence[np.ndarray]],
                     extra: Sequence[Sequence[np.ndarray]], n_data: int,
                     options: Sequence[Option], counterfactual: Sequence[Option], share: float,
                     permutations: int, seed: int) -> tuple[dict[str, Any], RowDivergence]:
    """The statistics from scoring results over data then reference rows (the first
    `n_data` being data): `candidates`, the candidates' tasks (one per candidate,
    `trait_tasks` order), and `extra`, the results of `divergence_tasks`. The cut and the
    test as in `row_divergence` and `divergence_summary`."""
    half = len(extra) // 2
    lps = trait_logprobs(candidates, _join(extra[:half], extra[half:]), options,
                         counterfactual)
    rows = row_divergence(lps, [o.name for o in counterfactual], share)
    return divergence_summary(rows, n_data, share, permutations, seed), rows


def _join(first: Sequence[Sequence[np.ndarray]],
          second: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    """Tasks over the data rows and the same tasks over the reference rows, as one list of
    tasks over data then reference rows."""
    return [[*a, *b] for a, b in zip(first, second, strict=True)]
