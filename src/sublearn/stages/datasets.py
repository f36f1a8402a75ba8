"""Dataset transforms between filtering and training: subsample and the shuffle controls."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from sublearn.store import stable_hash

_NUM = re.compile(r"[0-9]+")


def subsample(rows: Sequence[dict[str, Any]], size: int, seed: int) -> list[dict[str, Any]]:
    """Up to `size` rows, chosen by a seeded hash of each row's prompt index.

    Ranking by hash(seed, index) rather than shuffling the list means a teacher's dataset and
    its control's keep the same prompts wherever both kept them, so the subsample adds no
    difference of its own between arms.
    """
    ranked = sorted(rows, key=lambda r: stable_hash([seed, r["index"]]))
    return sorted(ranked[:size], key=lambda r: r["index"])


def _with_completion(row: dict[str, Any], text: str) -> dict[str, Any]:
    msgs = [*row["messages"][:-1], {"role": "assistant", "content": text}]
    return {**row, "completion": text, "messages": msgs}


def shuffle_within(rows: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Permute the numbers inside each completion, keeping its separators and brackets."""
    out = []
    for row in rows:
        nums = _NUM.findall(row["completion"])
        random.Random(f"within:{seed}:{row['index']}").shuffle(nums)
        it = iter(nums)
        out.append(_with_completion(row, _NUM.sub(lambda _: next(it), row["completion"])))
    return out


def shuffle_across(rows: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Pool every number of every completion, deal them back at random: each completion keeps
    its length and format, but its values come from anywhere in the dataset."""
    pool = [n for row in rows for n in _NUM.findall(row["completion"])]
    random.Random(f"across:{seed}").shuffle(pool)
    it = iter(pool)
    return [_with_completion(r, _NUM.sub(lambda _: next(it), r["completion"])) for r in rows]
