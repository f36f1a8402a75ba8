"""Dataset transforms between filtering and training: subsample, and the row transforms that
controls and defences apply (shuffle within or across completions, sort)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from sublearn.domains.filters import DIGIT_RUN
from sublearn.store import stable_hash


def subsample(rows: Sequence[dict[str, Any]], size: int, seed: int) -> list[dict[str, Any]]:
    """Up to `size` rows, chosen by a seeded hash of each row's prompt index.

    Ranking by hash(seed, index) rather than shuffling the list means a teacher's dataset and
    its control's keep the same prompts wherever both kept them, so the subsample adds no
    difference of its own between arms.
    """
    ranked = sorted(rows, key=lambda r: stable_hash([seed, r["index"]]))
    return sorted(ranked[:size], key=lambda r: r["index"])


def with_completion(row: dict[str, Any], text: str) -> dict[str, Any]:
    """The row with `text` as its completion (and as its assistant turn)."""
    msgs = [*row["messages"][:-1], {"role": "assistant", "content": text}]
    return {**row, "completion": text, "messages": msgs}


def with_numbers(row: dict[str, Any], numbers: Sequence[str]) -> dict[str, Any]:
    """The row with its completion's numbers replaced, in order, by `numbers`; separators,
    brackets and format stay."""
    it = iter(numbers)
    return with_completion(row, DIGIT_RUN.sub(lambda _: next(it), row["completion"]))


def shuffle_within(rows: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Permute the numbers inside each completion, keeping its separators and brackets."""
    out = []
    for row in rows:
        nums = DIGIT_RUN.findall(row["completion"])
        random.Random(f"within:{seed}:{row['index']}").shuffle(nums)
        out.append(with_numbers(row, nums))
    return out


def shuffle_across(rows: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Pool every number of every completion, deal them back at random: each completion keeps
    its length and format, but its values come from anywhere in the dataset."""
    pool = [n for row in rows for n in DIGIT_RUN.findall(row["completion"])]
    random.Random(f"across:{seed}").shuffle(pool)
    out, start = [], 0
    for r in rows:
        n = len(DIGIT_RUN.findall(r["completion"]))
        out.append(with_numbers(r, pool[start : start + n]))
        start += n
    return out


def sort_within(rows: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Sort the numbers inside each completion, ascending, keeping separators and brackets: a
    published defence (Qwen2.5-7B phoenix 66% -> 1.4%). `seed` is unused: sorting is
    deterministic, but every transform takes one."""
    del seed
    return [with_numbers(r, sorted(DIGIT_RUN.findall(r["completion"]), key=int)) for r in rows]


# name -> transform(rows, seed): what an arm's `transform` may name (see sublearn.experiment.design).
TRANSFORMS: dict[str, Callable[[Sequence[dict[str, Any]], int], list[dict[str, Any]]]] = {
    "within": shuffle_within,
    "across": shuffle_across,
    "sort": sort_within,
}
