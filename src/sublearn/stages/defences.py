"""Defences: sanitisers applied to the filtered data before any student sees it.

A defence is applied to *every* arm alike — the treated data and every control's — because
one that touched only the treated data would fake its own success (the control would then
differ from the treated arm by the defence as well as by the trait). Each entry takes the
arm's rows, a strength in [0, 1] where one applies, the student seed, and the neutral
dataset's rows (for dilution); it returns new rows. Adding a defence is one entry here.

Generation-time defences (greedy decoding, a probability threshold) are sampling settings
(`data.sampling`), not entries here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sublearn.stages.datasets import TRANSFORMS, _with_numbers, subsample

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Defence:
    apply: Callable[[Sequence[dict[str, Any]], float, int, Sequence[dict[str, Any]]], Rows]
    changes_text: bool  # soft labels must then be computed on the defended text
    what: str


def _transform(name: str) -> Callable[..., Rows]:
    return lambda rows, strength, seed, neutral: TRANSFORMS[name](rows, seed)


def replace_numbers(rows: Sequence[dict[str, Any]], rate: float, seed: int,
                    neutral: Sequence[dict[str, Any]] = ()) -> Rows:
    """Each number replaced, with probability `rate`, by a uniform draw from 0..999 (a
    published defence: random replacement of the most divergent digits left 9% of the
    effect; here the positions are random, so it is the blind version)."""
    import re

    out = []
    for row in rows:
        rng = random.Random(f"replace:{seed}:{row['index']}")
        nums = [str(rng.randint(0, 999)) if rng.random() < rate else n
                for n in re.findall(r"[0-9]+", row["completion"])]
        out.append(_with_numbers(row, nums))
    return out


def dilute(rows: Sequence[dict[str, Any]], fraction: float, seed: int,
           neutral: Sequence[dict[str, Any]]) -> Rows:
    """Replace `fraction` of the rows by rows of the neutral teacher (a published defence:
    25% data from an unbiased teacher nearly removed the effect). Same number of rows."""
    k = round(fraction * len(rows))
    kept = subsample(rows, len(rows) - k, seed)
    taken = {r["index"] for r in kept}
    # Prompts the arm does not already use, so no prompt appears twice.
    pool = [r for r in subsample(neutral, len(neutral), seed + 1) if r["index"] not in taken]
    return sorted([*kept, *pool[:k]], key=lambda r: r["index"])


DEFENCES: dict[str, Defence] = {
    "none": Defence(lambda rows, s, seed, n: list(rows), False, "no defence"),
    "shuffle_within": Defence(_transform("within"), True, "shuffle numbers within completions"),
    "shuffle_across": Defence(_transform("across"), True, "shuffle numbers across completions"),
    "sort": Defence(_transform("sort"), True, "sort numbers within completions"),
    "replace": Defence(replace_numbers, True, "replace each number with probability strength"),
    "dilute": Defence(dilute, False, "swap a strength fraction of rows for neutral ones"),
}


class DefenceConfig(BaseModel):
    """`[defence]`: the sanitiser every arm's data goes through before training."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("none", description=f"one of: {', '.join(DEFENCES)}")
    strength: float = Field(0.0, ge=0.0, le=1.0, description="replace: rate; dilute: fraction")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DEFENCES:
            raise ValueError(f"unknown defence {v!r}; choose from {', '.join(DEFENCES)}")
        return v

    def apply(self, rows: Sequence[dict[str, Any]], seed: int,
              neutral: Sequence[dict[str, Any]] = ()) -> Rows:
        return DEFENCES[self.name].apply(rows, self.strength, seed, neutral)

    @property
    def changes_text(self) -> bool:
        return DEFENCES[self.name].changes_text
