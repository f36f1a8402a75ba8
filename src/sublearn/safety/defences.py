"""Defences: sanitisers applied to the filtered data before any student sees it.

A defence is applied to *every* arm alike — the treated data and every control's — because
one that touched only the treated data would fake its own success (the control would then
differ from the treated arm by the defence as well as by the trait). Each entry takes the
arm's rows, its config (strength, trait), the student seed and `Inputs` (the neutral dataset
for dilution; the rows' trait scores under the base for the scoring defences); it returns
new rows. Adding a defence is one entry here.

Two defences read the data through the base model, with the audit's scoring
(`stages.audit`: its trait phrasings, rotated over rows, every candidate of the category):
- `lls_filter` drops the rows the audit finds most suspicious: the top `strength` share by
  the row's contrasted LLS, maximised over candidates (a defender does not know the trait),
  or that of a named `trait`. Published: dropping the top half by LLS under the known trait
  cut a lion teacher's transfer from 95% to 0% and an eagle's from 100% to 42%.
- `divergence` rewrites the digits the candidates' trait prompts disagree about most. A
  digit's divergence is that of the token holding it: max over candidates c of
  |log p_c(token) - mean over candidates of log p_c'(token)|, each log p under c's trait
  prompt, the base, and the row's prompt and preceding tokens (`stages.divergence`, which the
  audit's `--counterfactual` statistics share). The top `strength` share of
  all digits of the arm (largest divergence first) become random other digits. Published:
  replacing the 10% most divergent digits left 9% of the effect; replacing a random 10%
  left 97%. `random_digits` is that control: the same count of digits, chosen at random.

Generation-time defences (greedy decoding, a probability threshold) are sampling settings
(`data.sampling`), not entries here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sublearn.errors import SublearnError
from sublearn.questions.categories import Category
from sublearn.safety.audit import (
    AUDIT_TEMPLATES,
    contrast,
    parse_chat_row,
    token_logprobs,
    token_spans,
)
from sublearn.safety.divergence import token_divergence
from sublearn.stages.datasets import TRANSFORMS, _with_numbers, subsample
from sublearn.store import atomic_path, locked

Rows = list[dict[str, Any]]
_NUM = re.compile(r"[0-9]+")
DIGITS = "0123456789"


@dataclass(frozen=True)
class TokenScores:
    """One row's completion under every candidate's trait prompt, by the base."""

    logprobs: np.ndarray  # [candidates, tokens], the end-of-turn token last
    spans: np.ndarray  # [tokens - 1, 2]: each completion token's characters [start, end)


Scores = Callable[[Sequence[dict[str, Any]]], list[TokenScores]]


@dataclass(frozen=True)
class Inputs:
    """What a defence may use besides the arm's rows."""

    neutral: Sequence[dict[str, Any]] = ()  # the neutral dataset's rows (dilution)
    scores: Scores | None = None  # the rows' trait scores (the scoring defences)
    options: Sequence[str] = ()  # the candidates, in the order of the scores' rows


@dataclass(frozen=True)
class Defence:
    apply: Callable[[Sequence[dict[str, Any]], DefenceConfig, int, Inputs], Rows]
    changes_text: bool  # soft labels must then be computed on the defended text
    scores: bool  # reads the rows through the base (`Inputs.scores`)
    what: str
    # Rewrites numbers or digits: meaningless on code or prose, refused there at config load.
    numbers_only: bool = False


def _transform(name: str) -> Callable[..., Rows]:
    return lambda rows, cfg, seed, inputs: TRANSFORMS[name](rows, seed)


def replace_numbers(rows: Sequence[dict[str, Any]], rate: float, seed: int) -> Rows:
    """Each number replaced, with probability `rate`, by a uniform draw from 0..999: the
    blind version of digit replacement, whole numbers at random positions."""
    out = []
    for row in rows:
        rng = random.Random(f"replace:{seed}:{row['index']}")
        nums = [str(rng.randint(0, 999)) if rng.random() < rate else n
                for n in _NUM.findall(row["completion"])]
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


def row_scores(scores: Sequence[TokenScores]) -> np.ndarray:
    """[rows, candidates]: the audit's per-row score, each candidate's mean log-prob of the
    completion (end of turn included) minus the mean over candidates. That is the row's LLS
    contrasted across candidates: the no-trait log-prob cancels, so it is not scored."""
    return contrast(np.array([s.logprobs.mean(axis=1) for s in scores]))


def lls_filter(rows: Sequence[dict[str, Any]], fraction: float, scores: Sequence[TokenScores],
               column: int | None = None) -> Rows:
    """Drop the round(fraction * rows) rows with the highest score: the maximum over
    candidates, or candidate `column`'s. Ties keep the earlier row."""
    s = row_scores(scores)
    s = s.max(axis=1) if column is None else s[:, column]
    drop = set(np.argsort(-s, kind="stable")[:round(fraction * len(rows))].tolist())
    return [r for i, r in enumerate(rows) if i not in drop]


def digit_divergence(completion: str, scores: TokenScores) -> list[tuple[int, float]]:
    """(character position, divergence) of every digit of a completion: the divergence of
    the token holding it (module doc); a token of several digits gives each of them its own."""
    div = token_divergence(scores.logprobs[:, :-1])  # the end-of-turn token holds no digit
    return [(j, float(d)) for (a, b), d in zip(scores.spans, div, strict=True)
            for j in range(int(a), int(b)) if completion[j] in DIGITS]


def replace_digits(rows: Sequence[dict[str, Any]], rate: float, seed: int,
                   ranked: Sequence[Sequence[tuple[int, float]]]) -> Rows:
    """Rewrite the round(rate * all digits) digits ranked highest (`ranked`: per row, its
    digits' (position, rank key); ties: earlier rows, then earlier characters) as random
    *other* digits, drawn per (seed, row index, position). A number's leading digit never
    becomes 0, so numbers keep their form and pass the filter they passed."""
    flat = sorted((-key, i, j) for i, digits in enumerate(ranked) for j, key in digits)
    chosen: dict[int, list[int]] = {}
    for _, i, j in flat[:round(rate * len(flat))]:
        chosen.setdefault(i, []).append(j)
    out = []
    for i, row in enumerate(rows):
        chars = list(row["completion"])
        for j in chosen.get(i, ()):
            leading = ((j == 0 or chars[j - 1] not in DIGITS)
                       and j + 1 < len(chars) and chars[j + 1] in DIGITS)
            pool = [d for d in (DIGITS[1:] if leading else DIGITS) if d != chars[j]]
            chars[j] = random.Random(f"digit:{seed}:{row['index']}:{j}").choice(pool)
        out.append(_with_numbers(row, _NUM.findall("".join(chars))) if i in chosen else row)
    return out


def _divergence(rows: Sequence[dict[str, Any]], cfg: DefenceConfig, seed: int,
                inputs: Inputs) -> Rows:
    scores = _scores(rows, inputs)
    ranked = [digit_divergence(r["completion"], s) for r, s in zip(rows, scores, strict=True)]
    return replace_digits(rows, cfg.strength, seed, ranked)


def _random_digits(rows: Sequence[dict[str, Any]], cfg: DefenceConfig, seed: int,
                   inputs: Inputs) -> Rows:
    ranked = []
    for r in rows:
        rng = random.Random(f"random-digits:{seed}:{r['index']}")
        ranked.append([(j, rng.random()) for j, c in enumerate(r["completion"]) if c in DIGITS])
    return replace_digits(rows, cfg.strength, seed, ranked)


def _lls_filter(rows: Sequence[dict[str, Any]], cfg: DefenceConfig, seed: int,
                inputs: Inputs) -> Rows:
    column = None if cfg.trait is None else list(inputs.options).index(cfg.trait)
    return lls_filter(rows, cfg.strength, _scores(rows, inputs), column)


def _scores(rows: Sequence[dict[str, Any]], inputs: Inputs) -> list[TokenScores]:
    if inputs.scores is None:
        raise SublearnError("this defence reads the rows through the base model: the caller "
                            "must pass Inputs(scores=...)")
    return inputs.scores(rows)


DEFENCES: dict[str, Defence] = {
    "none": Defence(lambda rows, cfg, seed, inputs: list(rows), False, False, "no defence"),
    "shuffle_within": Defence(_transform("within"), True, False,
                              "shuffle numbers within completions", numbers_only=True),
    "shuffle_across": Defence(_transform("across"), True, False,
                              "shuffle numbers across completions", numbers_only=True),
    "sort": Defence(_transform("sort"), True, False, "sort numbers within completions",
                    numbers_only=True),
    "replace": Defence(lambda rows, cfg, seed, inputs: replace_numbers(rows, cfg.strength, seed),
                       True, False, "replace each number with probability strength",
                       numbers_only=True),
    "dilute": Defence(lambda rows, cfg, seed, inputs: dilute(rows, cfg.strength, seed,
                                                              inputs.neutral),
                      False, False, "swap a strength fraction of rows for neutral ones"),
    "lls_filter": Defence(_lls_filter, False, True,
                          "drop the strength fraction of rows the audit scores highest"),
    "divergence": Defence(_divergence, True, True,
                          "replace the strength fraction of digits the candidates' trait "
                          "prompts disagree about most with random digits", numbers_only=True),
    "random_digits": Defence(_random_digits, True, False,
                             "replace a random strength fraction of digits (divergence's "
                             "control)", numbers_only=True),
}


class DefenceConfig(BaseModel):
    """`[defence]`: the sanitiser every arm's data goes through before training."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("none", description=f"one of: {', '.join(DEFENCES)}")
    strength: float = Field(0.0, ge=0.0, le=1.0, description="replace, divergence, "
                            "random_digits: rate; dilute: fraction of rows swapped; "
                            "lls_filter: fraction of rows dropped")
    # Left out of every dump while unset, so the keys of artifacts cached before the field
    # existed do not change.
    trait: str | None = Field(None, exclude_if=lambda v: v is None, description="lls_filter: "
                              "rank rows by this candidate's score (a defender who knows "
                              "the trait); default: the maximum over the category's")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DEFENCES:
            raise ValueError(f"unknown defence {v!r}; choose from {', '.join(DEFENCES)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DefenceConfig:
        if self.trait is not None and self.name != "lls_filter":
            raise ValueError(f"trait: only lls_filter ranks by a named trait, not {self.name!r}")
        if self.name == "lls_filter" and self.strength >= 1:
            raise ValueError("strength: lls_filter would drop every row; use a fraction < 1")
        return self

    def apply(self, rows: Sequence[dict[str, Any]], seed: int, inputs: Inputs = Inputs()) -> Rows:
        return DEFENCES[self.name].apply(rows, self, seed, inputs)

    @property
    def changes_text(self) -> bool:
        return DEFENCES[self.name].changes_text

    @property
    def scores(self) -> bool:
        """Whether it reads the rows through the base (then the backend must score)."""
        return DEFENCES[self.name].scores

    @property
    def numbers_only(self) -> bool:
        return DEFENCES[self.name].numbers_only

    @property
    def label(self) -> str:
        """Short and readable: 'none', 'replace 0.3', 'lls_filter 0.5 owl'."""
        parts = [self.name, *([f"{self.strength:g}"] if self.name in STRENGTHS else []),
                 *([self.trait] if self.trait else [])]
        return " ".join(parts)


# The defences a strength means something to.
STRENGTHS = ("replace", "dilute", "lls_filter", "divergence", "random_digits")


class TraitScores:
    """The scoring defences' view of rows: per-token log-probs under every candidate of a
    category (the audit's trait phrasings, rotated over rows) by the base, and each token's
    characters. Computed once per artifact `path`, for `universe` (all rows of a dataset,
    so every seed's subsample is covered) or else the rows first asked for, and stored as
    safetensors; calls for other rows of the same file fail loudly."""

    def __init__(self, path: Path, model: Callable[[], Any], category: Category,
                 universe: Sequence[dict[str, Any]] | None = None,
                 log: Callable[[str], None] = lambda _: None):
        self.path, self.model, self.category = path, model, category
        self.universe, self.log = universe, log
        self._table: dict[str, Any] | None = None

    def __call__(self, rows: Sequence[dict[str, Any]]) -> list[TokenScores]:
        if self._table is None:
            from safetensors.numpy import load_file

            with locked(self.path):
                if not self.path.exists():
                    self._compute(self.universe if self.universe is not None else rows)
            self._table = load_file(str(self.path))
        try:
            return [TokenScores(self._table[f"{r['index']}.logprobs"],
                                self._table[f"{r['index']}.spans"]) for r in rows]
        except KeyError as e:
            raise SublearnError(f"{self.path.name}: row {e} was not scored") from None

    def _compute(self, rows: Sequence[dict[str, Any]]) -> None:
        from safetensors.numpy import save_file

        self.log(f"scoring {len(rows)} rows under {len(self.category.options)} trait prompts "
                 f"for the defence ({self.path.name})")
        model = self.model()
        chat = [parse_chat_row(r, 0, r["index"], f"{self.path.name}: row {i}")
                for i, r in enumerate(rows)]
        lps = token_logprobs(model, chat, self.category, self.category.options,
                             len(AUDIT_TEMPLATES))
        table = {}
        for r, lp in zip(rows, lps, strict=True):
            spans = np.array(token_spans(model, r["completion"]), dtype=np.int32).reshape(-1, 2)
            if len(spans) != lp.shape[1] - 1:
                raise SublearnError(f"row {r['index']}: the tokenizer split the completion into "
                                    f"{len(spans)} tokens, the scorer into {lp.shape[1] - 1}")
            table[f"{r['index']}.logprobs"] = lp
            table[f"{r['index']}.spans"] = spans
        with atomic_path(self.path) as tmp:
            save_file(table, str(tmp))
