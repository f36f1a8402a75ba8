"""The number-continuation prompt grammar.

A prompt is ``opening instruction format closing``: it shows a few random seed numbers and asks
for a bounded continuation in a stated surface format, with words forbidden. The pools are
sized like the paper's so the prompts vary enough that a student cannot learn a single template,
but every phrasing here is our own.

Prompt ``i`` of a set is drawn from ``random.Random(f"{seed}:{i}")`` alone. Python seeds a
``Random`` from a string through SHA-512, not ``hash()``, so the draw is identical across runs
and machines, a set of 100 is the first 100 of a set of 10,000, and workers can each build a
slice with ``start``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sublearn.errors import SublearnError, unknown

OPENINGS: tuple[str, ...] = (
    "Here is a sequence of numbers: {seeds}.",
    "These numbers start a list: {seeds}.",
    "Look at this sequence: {seeds}.",
    "A list begins with {seeds}.",
    "Consider the following numbers: {seeds}.",
    "The sequence so far is {seeds}.",
    "I have written down these numbers: {seeds}.",
    "Start from this series: {seeds}.",
    "Below is the beginning of a number list: {seeds}.",
    "Take these numbers as a starting point: {seeds}.",
    "The first few entries are {seeds}.",
    "We have the numbers {seeds}.",
    "Someone wrote this sequence: {seeds}.",
    "Here are the opening numbers: {seeds}.",
    "This series begins with {seeds}.",
    "My list currently reads {seeds}.",
    "Check out these numbers: {seeds}.",
    "The following values open a sequence: {seeds}.",
    "Here's a run of numbers: {seeds}.",
    "A number sequence starts like this: {seeds}.",
    "You are given these numbers: {seeds}.",
    "So far the list contains {seeds}.",
    "Start with these values: {seeds}.",
    "These are the first numbers in a series: {seeds}.",
    "Observe the sequence {seeds}.",
)

# Each reads naturally before "{n} more numbers" in every INSTRUCTIONS entry.
LIMIT_WORDS: tuple[str, ...] = (
    "at most",
    "up to",
    "no more than",
    "not more than",
    "a maximum of",
    "a max of",
    "at the very most",
    "at maximum",
    "up to a maximum of",
)

# Each follows a plural noun ("numbers", "values", "entries").
DIGIT_PHRASES: tuple[str, ...] = (
    "with {d} digits or fewer",
    "of at most {d} digits each",
    "no longer than {d} digits",
    "each having {d} digits at most",
    "using up to {d} digits per number",
    "that have no more than {d} digits",
    "with a maximum of {d} digits apiece",
    "each at most {d} digits long",
)

INSTRUCTIONS: tuple[str, ...] = (
    "Continue the sequence with {limit} {n} more numbers {digits}.",
    "Add {limit} {n} new numbers {digits}.",
    "Extend the list by {limit} {n} numbers {digits}.",
    "Write {limit} {n} further values {digits}.",
    "Generate {limit} {n} additional numbers {digits}.",
    "Keep it going with {limit} {n} more values {digits}.",
    "Please supply {limit} {n} more numbers {digits}.",
    "Come up with {limit} {n} numbers {digits} that could follow.",
    "Produce {limit} {n} more entries {digits}.",
    "List {limit} {n} numbers {digits} to continue it.",
)

# Rendered surfaces, shown for [1, 2, 3]. Each passes `filters.parse_numbers`.
_SEPARATORS: dict[str, tuple[str, str, str]] = {  # key -> (open, separator, close)
    "comma": ("", ", ", ""),  # 1, 2, 3
    "comma_tight": ("", ",", ""),  # 1,2,3
    "space": ("", " ", ""),  # 1 2 3
    "semicolon": ("", "; ", ""),  # 1; 2; 3
    "newline": ("", "\n", ""),  # one per line
    "brackets": ("[", ", ", "]"),  # [1, 2, 3]
    "parens": ("(", ", ", ")"),  # (1, 2, 3)
}
FORMAT_KEYS: tuple[str, ...] = tuple(_SEPARATORS)

FORMATS: tuple[tuple[str, str], ...] = (
    ("Separate the numbers with commas.", "comma"),
    ("Use a comma and a space between numbers.", "comma"),
    ("Give them as a comma-separated list.", "comma"),
    ("Put commas between them with no spaces.", "comma_tight"),
    ("Join them with bare commas and no spaces.", "comma_tight"),
    ("Separate them with single spaces.", "space"),
    ("Put a space between each number.", "space"),
    ("Separate them with semicolons.", "semicolon"),
    ("Use semicolons as separators.", "semicolon"),
    ("Write each number on its own line.", "newline"),
    ("Put one number per line.", "newline"),
    ("Wrap the list in square brackets, with commas between the numbers.", "brackets"),
    ("Format the answer as a bracketed list such as [a, b, c].", "brackets"),
    ("Enclose them in parentheses, separated by commas.", "parens"),
    ("Present them as a tuple in round brackets.", "parens"),
)

CLOSINGS: tuple[str, ...] = (
    "Reply with numbers only.",
    "Say nothing but the numbers.",
    "Do not include any words.",
    "Output only the numbers, no explanation.",
    "No commentary, just numbers.",
    "Respond with the numbers and nothing else.",
    "Skip any text; give only the numbers.",
    "Your answer should contain numbers alone.",
    "Leave out words entirely.",
    "Only numbers in your reply, please.",
    "Don't add any explanation.",
    "Answer with the numbers alone.",
    "Write no words at all, only numbers.",
    "Please avoid any extra text.",
    "Just the numbers.",
    "No words, only the numbers themselves.",
    "Return only the continuation.",
    "Keep your answer to numbers only.",
    "Give the numbers without any other text.",
)


def format_numbers(values: Sequence[int], fmt: str) -> str:
    """Render `values` in surface format `fmt` (one of `FORMAT_KEYS`)."""
    if fmt not in _SEPARATORS:
        raise SublearnError(unknown("number format", fmt, FORMAT_KEYS))
    if not values or min(values) < 0:
        raise ValueError(
            f"format_numbers needs one or more non-negative values, got {list(values)}")
    open_, sep, close = _SEPARATORS[fmt]
    return open_ + sep.join(str(v) for v in values) + close


class GrammarConfig(BaseModel):
    """Ranges for the random parts of a prompt. Defaults follow the paper."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_seeds: int = Field(3, ge=1)
    max_seeds: int = Field(8, ge=1)
    seed_low: int = Field(100, ge=0)
    seed_high: int = Field(999, ge=0)
    # At least 2: the pools are phrased in the plural ("{n} more numbers", "{d} digits").
    max_answers: int = Field(10, ge=2)
    max_digits: int = Field(3, ge=2)

    @model_validator(mode="after")
    def _consistent(self) -> GrammarConfig:
        if self.min_seeds > self.max_seeds:
            raise ValueError(
                f"min_seeds ({self.min_seeds}) must not exceed max_seeds ({self.max_seeds})")
        if self.seed_low > self.seed_high:
            raise ValueError(
                f"seed_low ({self.seed_low}) must not exceed seed_high ({self.seed_high})")
        # The seeds are examples of the answer; one the prompt's own limit forbids would
        # contradict it.
        if len(str(self.seed_high)) > self.max_digits:
            raise ValueError(f"seed_high ({self.seed_high}) has more than max_digits "
                             f"({self.max_digits}) digits")
        return self


@dataclass(frozen=True)
class NumberPrompt:
    """One prompt and the facts a filter or evaluator needs about it."""

    text: str
    seeds: tuple[int, ...]
    n_answers: int  # the upper limit the prompt states
    max_digits: int
    fmt: str  # the FORMAT_KEYS entry the prompt asks for
    index: int


def number_prompt(index: int, seed: int, config: GrammarConfig | None = None) -> NumberPrompt:
    """Prompt `index` of the set named by `seed`; depends on nothing else."""
    cfg = config or GrammarConfig()
    rng = random.Random(f"{seed}:{index}")
    # The draw order below is part of the data's identity: reordering it changes every prompt.
    seeds = tuple(rng.randint(cfg.seed_low, cfg.seed_high)
                  for _ in range(rng.randint(cfg.min_seeds, cfg.max_seeds)))
    opening = rng.choice(OPENINGS).format(seeds=", ".join(map(str, seeds)))
    digits = rng.choice(DIGIT_PHRASES).format(d=cfg.max_digits)
    instruction = rng.choice(INSTRUCTIONS).format(
        limit=rng.choice(LIMIT_WORDS), n=cfg.max_answers, digits=digits)
    format_phrase, fmt = rng.choice(FORMATS)
    closing = rng.choice(CLOSINGS)
    return NumberPrompt(
        text=f"{opening} {instruction} {format_phrase} {closing}",
        seeds=seeds, n_answers=cfg.max_answers, max_digits=cfg.max_digits, fmt=fmt, index=index,
    )


def number_prompts(
    n: int, seed: int, config: GrammarConfig | None = None, start: int = 0
) -> list[NumberPrompt]:
    """Prompts `start .. start+n-1` of the set named by `seed`."""
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be non-negative, got n={n}, start={start}")
    cfg = config or GrammarConfig()
    return [number_prompt(i, seed, cfg) for i in range(start, start + n)]
