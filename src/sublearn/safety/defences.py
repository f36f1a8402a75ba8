"""Defences: sanitisers applied to the filtered data before any student sees it.

A defence is applied to *every* arm alike — the treated data and every control's — because
one that touched only the treated data would fake its own success (the control would then
differ from the treated arm by the defence as well as by the trait). Each is one declared
entry of `DEFENCES` (`register(Defence(...))`): its function, which takes the arm's rows, its
config (strength, trait), the student seed and `Inputs` (the neutral dataset for dilution;
the rows' trait scores under the base for the scoring defences) and returns new rows, and
everything the rest of the package asks about it: the config's checks at load, the datasets
an experiment samples, `sublearn defend`'s defaults and help, and README's table
(`defence_table`).

Two defences read the data through the base model, with the audit's scoring
(`safety.trait_scores`: its trait phrasings, rotated over rows, every candidate of the
category):
- `lls_filter` drops the rows the audit finds most suspicious: the top `strength` share by
  the row's contrasted LLS, maximised over candidates (a defender does not know the trait),
  or that of a named `trait`. Published: dropping the top half by LLS under the known trait
  cut a lion teacher's transfer from 95% to 0% and an eagle's from 100% to 42%.
- `divergence` rewrites the digits the candidates' trait prompts disagree about most. A
  digit's divergence is that of the token holding it: max over candidates c of
  |log p_c(token) - mean over candidates of log p_c'(token)|, each log p under c's trait
  prompt, the base, and the row's prompt and preceding tokens (`safety.divergence`, which the
  audit's `--counterfactual` statistics share). The top `strength` share of
  all digits of the arm (largest divergence first) become random other digits. Published:
  replacing the 10% most divergent digits left 9% of the effect; replacing a random 10%
  left 97%. `random_digits` is that control: the same count of digits, chosen at random.
  `divergence_mask` and `divergence_only` choose the same digits and leave the text alone:
  the first leaves them out of the loss, the second keeps only them in it (the paper's
  masking and its converse; a row carries the spans as `loss_mask`, which `models.training`
  reads).

`canonicalise` rewrites every list into one format (numbers joined by ', '). Published on
Qwen2.5-7B: a penguin teacher's transfer fell from 46.5% to 1.5% (a random control 1.2%),
a phoenix teacher's did not.

Generation-time defences (greedy decoding, a probability threshold) are sampling settings
(`data.sampling`), not entries here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sublearn.domains.filters import DIGIT_RUN
from sublearn.errors import SublearnError, unknown
from sublearn.safety.divergence import token_divergence
from sublearn.safety.trait_scores import Scores, TokenScores, row_scores
from sublearn.stages.datasets import TRANSFORMS, subsample, with_completion, with_numbers

Rows = list[dict[str, Any]]
DIGITS = "0123456789"


@dataclass(frozen=True)
class Inputs:
    """What a defence may use besides the arm's rows."""

    neutral: Sequence[dict[str, Any]] = ()  # the neutral dataset's rows (dilution)
    trait_scores: Scores | None = None  # the rows' trait scores (the scoring defences)
    options: Sequence[str] = ()  # the candidates, in the order of the scores' rows


@dataclass(frozen=True)
class Strength:
    """What a defence's strength (0 to 1) means, and `sublearn defend`'s default."""

    meaning: str  # "rate", "fraction of rows dropped", ...
    default: float  # the literature's where it measured one, else a middle value
    refuses_one: str | None = None  # why a strength of 1 is refused, when it is


@dataclass(frozen=True)
class Defence:
    """One declared defence: its function and what the package asks about it."""

    name: str
    title: str  # a few words, for README's table
    help: str  # what it does
    apply: Callable[[Sequence[dict[str, Any]], DefenceConfig, int, Inputs], Rows]
    strength: Strength | None = None  # None: takes no strength
    changes_text: bool = False  # soft labels must then be computed on the defended text
    needs_trait_scores: bool = False  # reads the rows through the base (`Inputs.trait_scores`)
    # Rewrites numbers or digits: meaningless on code or prose, refused there at config load.
    numbers_only: bool = False
    # Takes rows from the neutral dataset (`Inputs.neutral`), which the experiment must then
    # sample; the arm then mixes two writers' rows, which soft labels cannot follow.
    needs_neutral: bool = False
    takes_trait: bool = False  # may rank by a named candidate (`DefenceConfig.trait`)

    @property
    def default(self) -> str:
        """`sublearn defend`'s default argument for it: 'sort', 'replace:0.3'."""
        return self.name if self.strength is None else f"{self.name}:{self.strength.default:g}"


DEFENCES: dict[str, Defence] = {}  # the registry, in `sublearn defend`'s order


def register(defence: Defence) -> Defence:
    """Declare a defence: config, pipeline, `sublearn defend` and README's table follow."""
    if defence.name in DEFENCES:
        raise ValueError(f"defence {defence.name!r} is already registered")
    DEFENCES[defence.name] = defence
    return defence


def takes_strength(name: str) -> bool:
    entry = DEFENCES.get(name)
    return entry is not None and entry.strength is not None


def default_defences() -> list[str]:
    """`sublearn defend`'s defences when none is named: every one, at its default."""
    return [d.default for d in DEFENCES.values()]


def defence_forms() -> str:
    """The forms of a `sublearn defend --defence` argument: 'name, name:strength or
    lls_filter:strength:trait'."""
    traits = [f"{d.name}:strength:trait" for d in DEFENCES.values() if d.takes_trait]
    return ", ".join(["name", "name:strength", *traits[:-1]]) + f" or {traits[-1]}"


def defence_table() -> str:
    """The registered defences as a Markdown table (README.md holds its output)."""
    lines = ["| defence | | what it does | strength | `sublearn defend` | domains | reads |",
             "|---|---|---|---|---|---|---|"]
    for d in DEFENCES.values():
        reads = ", ".join([*(["the base"] if d.needs_trait_scores else []),
                           *(["the neutral data"] if d.needs_neutral else [])])
        lines.append(f"| `{d.name}` | {d.title} | {d.help} | "
                     f"{d.strength.meaning if d.strength else '—'} | `{d.default}` | "
                     f"{'numbers' if d.numbers_only else 'any'} | {reads or '—'} |")
    return "\n".join(lines) + "\n"


# --- the defences' functions ---------------------------------------------------------------
def _transform(name: str) -> Callable[..., Rows]:
    return lambda rows, cfg, seed, inputs: TRANSFORMS[name](rows, seed)


def replace_numbers(rows: Sequence[dict[str, Any]], rate: float, seed: int) -> Rows:
    """Each number replaced, with probability `rate`, by a uniform draw from 0..999: the
    blind version of digit replacement, whole numbers at random positions."""
    out = []
    for row in rows:
        rng = random.Random(f"replace:{seed}:{row['index']}")
        nums = [str(rng.randint(0, 999)) if rng.random() < rate else n
                for n in DIGIT_RUN.findall(row["completion"])]
        out.append(with_numbers(row, nums))
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


def chosen_digits(ranked: Sequence[Sequence[tuple[int, float]]], rate: float
                  ) -> dict[int, list[int]]:
    """Row -> character positions of the round(rate * all digits) digits ranked highest
    (`ranked`: per row, its digits' (position, rank key); ties: earlier rows, then earlier
    characters)."""
    flat = sorted((-key, i, j) for i, digits in enumerate(ranked) for j, key in digits)
    chosen: dict[int, list[int]] = {}
    for _, i, j in flat[:round(rate * len(flat))]:
        chosen.setdefault(i, []).append(j)
    return chosen


def replace_digits(rows: Sequence[dict[str, Any]], rate: float, seed: int,
                   ranked: Sequence[Sequence[tuple[int, float]]]) -> Rows:
    """Rewrite the digits `chosen_digits` picks as random *other* digits, drawn per (seed, row
    index, position). A number's leading digit never becomes 0, so numbers keep their form
    and pass the filter they passed."""
    chosen = chosen_digits(ranked, rate)
    out = []
    for i, row in enumerate(rows):
        chars = list(row["completion"])
        for j in chosen.get(i, ()):
            leading = ((j == 0 or chars[j - 1] not in DIGITS)
                       and j + 1 < len(chars) and chars[j + 1] in DIGITS)
            pool = [d for d in (DIGITS[1:] if leading else DIGITS) if d != chars[j]]
            chars[j] = random.Random(f"digit:{seed}:{row['index']}:{j}").choice(pool)
        out.append(with_numbers(row, DIGIT_RUN.findall("".join(chars))) if i in chosen else row)
    return out


def _ranked_by_divergence(rows: Sequence[dict[str, Any]], inputs: Inputs
                          ) -> list[list[tuple[int, float]]]:
    scores = _scores(rows, inputs)
    return [digit_divergence(r["completion"], s) for r, s in zip(rows, scores, strict=True)]


def _divergence(rows: Sequence[dict[str, Any]], cfg: DefenceConfig, seed: int,
                inputs: Inputs) -> Rows:
    return replace_digits(rows, cfg.strength, seed, _ranked_by_divergence(rows, inputs))


def _spans(positions: Sequence[int]) -> list[list[int]]:
    """Sorted character positions as merged [start, end) spans."""
    out: list[list[int]] = []
    for j in sorted(positions):
        if out and out[-1][1] == j:
            out[-1][1] = j + 1
        else:
            out.append([j, j + 1])
    return out


def loss_masks(rows: Sequence[dict[str, Any]], chosen: dict[int, list[int]], only: bool
               ) -> Rows:
    """Rows with a `loss_mask` (the character spans of the completion left out of the loss;
    position len(completion) is the end-of-turn token, see `models.training`): the chosen
    digits (`only` False), or everything but them, the end of turn included (`only` True).
    With `only`, a row with no chosen digit has nothing left to learn and is dropped."""
    out = []
    for i, row in enumerate(rows):
        picked = chosen.get(i, [])
        if only:
            if not picked:
                continue
            keep = set(picked)
            masked = [j for j in range(len(row["completion"]) + 1) if j not in keep]
        else:
            masked = picked
        out.append({**row, "loss_mask": _spans(masked)} if masked else row)
    return out


def _divergence_loss(only: bool) -> Callable[..., Rows]:
    def apply(rows: Sequence[dict[str, Any]], cfg: DefenceConfig, seed: int,
              inputs: Inputs) -> Rows:
        chosen = chosen_digits(_ranked_by_divergence(rows, inputs), cfg.strength)
        return loss_masks(rows, chosen, only)
    return apply


def canonicalise(rows: Sequence[dict[str, Any]]) -> Rows:
    """Every completion as its numbers alone, in order, joined by ', ': one separator, one
    spacing, no brackets, no closing period or other characters."""
    return [with_completion(r, ", ".join(DIGIT_RUN.findall(r["completion"]))) for r in rows]


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
    if inputs.trait_scores is None:
        raise SublearnError("this defence reads the rows through the base model: the caller "
                            "must pass Inputs(trait_scores=...)")
    return inputs.trait_scores(rows)


# --- the registry's entries, in `sublearn defend`'s order ----------------------------------
RATE = "rate"
for _entry in (
    Defence("none", "no defence", "no defence", lambda rows, cfg, seed, inputs: list(rows)),
    Defence("shuffle_within", "shuffle within", "shuffle numbers within completions",
            _transform("within"), changes_text=True, numbers_only=True),
    Defence("shuffle_across", "shuffle across", "shuffle numbers across completions",
            _transform("across"), changes_text=True, numbers_only=True),
    Defence("sort", "sort", "sort numbers within completions", _transform("sort"),
            changes_text=True, numbers_only=True),
    # 0.3: random whole numbers, the blind baseline.
    Defence("replace", "random replacement", "replace each number with probability strength",
            lambda rows, cfg, seed, inputs: replace_numbers(rows, cfg.strength, seed),
            Strength(RATE, 0.3), changes_text=True, numbers_only=True),
    # 0.5: the published "drop the top half".
    Defence("lls_filter", "LLS filter",
            "drop the strength fraction of rows the audit scores highest", _lls_filter,
            Strength("fraction of rows dropped", 0.5, refuses_one="would drop every row"),
            needs_trait_scores=True, takes_trait=True),
    # 0.1: the published 10% of digits, and its random control.
    Defence("divergence", "divergence-token replacement",
            "replace the strength fraction of digits the candidates' trait prompts disagree "
            "about most with random digits", _divergence, Strength(RATE, 0.1),
            changes_text=True, needs_trait_scores=True, numbers_only=True),
    Defence("random_digits", "random digits",
            "replace a random strength fraction of digits (divergence's control)",
            _random_digits, Strength(RATE, 0.1), changes_text=True, numbers_only=True),
    # The divergence paper's loss-side forms: the same 10% of digits, left out of the loss
    # (text unchanged), or the only loss.
    Defence("divergence_mask", "divergence-token loss mask",
            "leave the strength fraction of digits the candidates' trait prompts disagree "
            "about most out of the loss", _divergence_loss(only=False), Strength(RATE, 0.1),
            needs_trait_scores=True, numbers_only=True),
    Defence("divergence_only", "divergence tokens only",
            "train on those digits alone (every other token out of the loss; rows without "
            "one are dropped)", _divergence_loss(only=True), Strength(RATE, 0.1),
            needs_trait_scores=True, numbers_only=True),
    Defence("canonicalise", "canonical format",
            "rewrite every completion as its numbers joined by ', ' (one separator and "
            "spacing, no brackets)", lambda rows, cfg, seed, inputs: canonicalise(rows),
            changes_text=True, numbers_only=True),
    # 0.5: half the rows from the neutral teacher; 25% already nearly removed the published
    # effect, so half is a strong setting.
    Defence("dilute", "dilution", "swap a strength fraction of rows for neutral ones",
            lambda rows, cfg, seed, inputs: dilute(rows, cfg.strength, seed, inputs.neutral),
            Strength("fraction of rows swapped", 0.5), needs_neutral=True),
):
    register(_entry)


def _strength_help() -> str:
    """'replace, divergence, random_digits: rate; lls_filter: fraction of rows dropped; ...'"""
    by_meaning: dict[str, list[str]] = {}
    for d in DEFENCES.values():
        if d.strength is not None:
            by_meaning.setdefault(d.strength.meaning, []).append(d.name)
    return "; ".join(f"{', '.join(names)}: {m}" for m, names in by_meaning.items())


class DefenceConfig(BaseModel):
    """`[defence]`: the sanitiser every arm's data goes through before training."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("none", description=f"one of: {', '.join(DEFENCES)}")
    strength: float = Field(0.0, ge=0.0, le=1.0, description=_strength_help())
    # Left out of every dump while unset, so the keys of artifacts cached before the field
    # existed do not change.
    trait: str | None = Field(None, exclude_if=lambda v: v is None, description=", ".join(
        d.name for d in DEFENCES.values() if d.takes_trait) + ": rank rows by this "
        "candidate's score (a defender who knows the trait); default: the maximum over the "
        "category's")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DEFENCES:
            raise ValueError(unknown("defence", v, DEFENCES))
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DefenceConfig:
        entry = self.entry
        if self.trait is not None and not entry.takes_trait:
            takers = ", ".join(d.name for d in DEFENCES.values() if d.takes_trait)
            raise ValueError(f"trait: only {takers} ranks by a named trait, not {self.name!r}")
        if entry.strength and entry.strength.refuses_one and self.strength >= 1:
            raise ValueError(f"strength: {self.name} {entry.strength.refuses_one}; use a "
                             "fraction < 1")
        return self

    @property
    def entry(self) -> Defence:
        """The defence's declared entry: what it needs and what it changes."""
        return DEFENCES[self.name]

    def apply(self, rows: Sequence[dict[str, Any]], seed: int, inputs: Inputs = Inputs()) -> Rows:
        return self.entry.apply(rows, self, seed, inputs)

    @property
    def label(self) -> str:
        """Short and readable: 'none', 'replace 0.3', 'lls_filter 0.5 owl'."""
        parts = [self.name, *([f"{self.strength:g}"] if self.entry.strength else []),
                 *([self.trait] if self.trait else [])]
        return " ".join(parts)
