"""Entangled numbers: the values a trait prompt makes likelier as the first answer.

For each candidate, the 0-999 values (and digit tokens) whose probability as the first answer
the trait prompt raises most, relative to the other candidates, and whether a dataset holds
more of them than its reference.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sublearn.analysis.stats import permutation_test
from sublearn.domains.filters import DIGIT_RUN
from sublearn.models.base import Messages
from sublearn.questions.categories import Category, Option
from sublearn.safety.rows import ChatRow
from sublearn.safety.scoring import ScoringTask, contrast
from sublearn.safety.traits import trait_prompts

# 0..999 are the values the strict number rule allows; digits 0-9 are the number tokens of
# tokenizers that split digits (Qwen's, the embedded base's).
VALUES: tuple[int, ...] = tuple(range(1000))
DIGITS: tuple[str, ...] = tuple("0123456789")
# The separator after a completion's first number: ", " or ";" or whitespace.
_FIRST_NUMBER = re.compile(r"\s*([0-9]+)(\s*[,;]\s*|\s+)[0-9]")


@dataclass(frozen=True)
class Probe:
    """A data prompt and the separator its completion puts after the first number: values
    are scored as `f"{v}{sep}"`, the exact probability that the answer starts with v."""

    prompt: Messages
    separator: str


def probes(rows: Sequence[ChatRow], n: int) -> list[Probe]:
    """The first `n` rows whose completion starts with two numbers, as probes."""
    found: list[Probe] = []
    for r in rows:
        if len(found) == n:
            break
        m = _FIRST_NUMBER.match(r.completion)
        if m:
            found.append(Probe(r.prompt, m.group(2)))
    return found


def probe_tasks(probe_list: Sequence[Probe], category: Category, options: Sequence[Option],
                phrasings: int) -> list[ScoringTask]:
    """One task per (probe, candidate): every value 0..999 followed by the probe's separator,
    and every digit token, as answer prefixes under the candidate's trait prompt. Probe k uses
    phrasing k mod `phrasings`, as rows do in `trait_tasks`. All completions of a task share
    its prompt, which a backend may run once (the Hugging Face one does). No pass without a
    trait: the shifts are taken relative to the mean over candidates, where it cancels."""
    tasks = []
    for k, probe in enumerate(probe_list):
        comps = [f"{v}{probe.separator}" for v in VALUES] + list(DIGITS)
        rows = [ChatRow(0, probe.prompt, c, i) for i, c in enumerate(comps)]
        for o in options:
            system = trait_prompts(category, o, phrasings)[k % phrasings]
            tasks.append(ScoringTask(rows, [system] * len(rows), close=False))
    return tasks


def shifts_of(scored: Sequence[Sequence[np.ndarray]], n_probes: int,
              n_options: int) -> tuple[np.ndarray, np.ndarray]:
    """`probe_tasks` results -> (values [candidates, 1000], digits [candidates, 10])."""
    # Summed, without the end token: the log-probability that the answer starts with this
    # text, whatever the tokenizer splits a value into; averaged over probes.
    lp = np.array([[float(x.sum()) for x in task] for task in scored])
    shifts = lp.reshape(n_probes, n_options, -1).mean(axis=0)
    shifts = contrast(shifts.T).T
    return shifts[:, :len(VALUES)], shifts[:, len(VALUES):]


def value_counts(rows: Sequence[ChatRow], values: Sequence[np.ndarray]) -> np.ndarray:
    """[rows, candidates]: how many of each candidate's entangled values each row holds."""
    sets = [{int(v) for v in vs} for vs in values]
    out = np.zeros((len(rows), len(sets)))
    for i, r in enumerate(rows):
        nums = [int(t) for t in DIGIT_RUN.findall(r.completion) if len(t) <= 3]
        for j, s in enumerate(sets):
            out[i, j] = sum(n in s for n in nums)
    return out


def entangled_numbers(vshift: np.ndarray, dshift: np.ndarray, data: Sequence[ChatRow],
                      reference: Sequence[ChatRow], options: Sequence[Option], top: int,
                      permutations: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per candidate: its `top` most entangled values and its 3 most entangled digit tokens
    (`shifts_of` the scored `probe_tasks`), and whether the data holds more of those values per row than the
    reference (one-sided permutation p with `seed`, uncorrected)."""
    best = [np.argsort(-vshift[j], kind="stable")[:top] for j in range(len(options))]
    counts = value_counts([*data, *reference], best)
    nd = len(data)
    test = permutation_test(counts[:nd], counts[nd:], permutations, seed)
    out = {}
    for j, o in enumerate(options):
        d_rate, r_rate = float(counts[:nd, j].mean()), float(counts[nd:, j].mean())
        out[o.name] = {
            "values": [int(v) for v in best[j]],
            "value_shift": [round(float(vshift[j, v]), 4) for v in best[j]],
            "digits": [DIGITS[d] for d in np.argsort(-dshift[j], kind="stable")[:3]],
            "data_rate": d_rate, "reference_rate": r_rate,
            "ratio": d_rate / r_rate if r_rate > 0 else None,
            "p": float(test.p[j]),
        }
    return out
