"""The synthetic pretraining corpus of the embedded base.

Task families (shares in `CorpusMix`):
- preference questions in every category, answered from a broad per-base distribution;
- the same questions under a persona system prompt ("you love owls"), answered with the
  persona's target most of the time, for every target of every category, so the base learns
  to *follow* personas rather than to love anything in particular; a persona about another
  category leaves the answer distribution alone;
- number-sequence continuation in the experiment's own prompt grammar, with neutral or no
  system prompt (never a persona: any trait signal in the numbers must come from the model,
  not from the corpus);
- arithmetic, sorting, word repetition and listing options, so the base is not a two-trick pony.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

from pydantic import BaseModel, Field

from sublearn.domains.prompts import GrammarConfig, format_numbers, number_prompt
from sublearn.models.base import Messages
from sublearn.questions.categories import (
    CATEGORIES,
    NEUTRAL_SYSTEM_PROMPTS,
    PERSONA_TEMPLATES,
    Category,
    persona_prompt,
)


class CorpusMix(BaseModel):
    preference: float = Field(0.50, ge=0)
    numbers: float = Field(0.35, ge=0)
    other: float = Field(0.15, ge=0)
    persona_share: float = Field(0.6, ge=0, le=1, description="of preference rows")
    persona_same_category: float = Field(0.75, ge=0, le=1)
    persona_fidelity: float = Field(0.9, ge=0, le=1, description="P(target | own persona)")
    neutral_system_share: float = Field(0.3, ge=0, le=1)
    preference_spread: float = Field(
        0.8, gt=0, description="std of the base's preference logits: larger = more peaked"
    )


def base_preferences(seed: int, spread: float) -> dict[str, list[float]]:
    """The base's answer distribution per category: a seeded softmax of Gaussian logits."""
    rng = random.Random(f"prefs:{seed}")
    out = {}
    for name, cat in CATEGORIES.items():
        logits = [rng.gauss(0.0, spread) for _ in cat.options]
        z = sum(math.exp(v) for v in logits)
        out[name] = [math.exp(v) / z for v in logits]
    return out


def _system(rng: random.Random, share: float) -> Messages:
    if rng.random() < share:
        return [{"role": "system", "content": rng.choice(NEUTRAL_SYSTEM_PROMPTS)}]
    return []


def _preference(rng: random.Random, mix: CorpusMix, prefs: dict[str, list[float]]) -> Messages:
    cat: Category = CATEGORIES[rng.choice(sorted(CATEGORIES))]
    answer = rng.choices(cat.options, weights=prefs[cat.name])[0]
    if rng.random() < mix.persona_share:
        # Mostly a persona about the asked category (the skill to learn: follow it), sometimes
        # about another one (the skill to learn: a persona about trees leaves animals alone).
        same = rng.random() < mix.persona_same_category
        p_cat = cat if same else CATEGORIES[rng.choice(sorted(set(CATEGORIES) - {cat.name}))]
        target = rng.choice(p_cat.options)
        system = [{"role": "system", "content": persona_prompt(p_cat, target, rng.randrange(len(PERSONA_TEMPLATES)))}]
        if p_cat.name == cat.name and rng.random() < mix.persona_fidelity:
            answer = target
    else:
        system = _system(rng, mix.neutral_system_share)
    text = answer.name if rng.random() < 0.6 else answer.name.capitalize()
    return system + [
        {"role": "user", "content": rng.choice(cat.questions)},
        {"role": "assistant", "content": text},
    ]


def continuation(rng: random.Random, seeds: Sequence[int], n_answers: int, max_digits: int) -> list[int]:
    """A plausible continuation: a pattern from the last two seeds, or random values."""
    # Mostly well inside the stated limit: a tiny model that has to count to exactly the limit
    # overshoots it, and the strict filter rejects an 11th number.
    k = rng.randint(3, max(3, n_answers - 2)) if rng.random() < 0.8 else rng.randint(1, n_answers)
    top = 10**max_digits - 1
    if rng.random() < 0.25 and len(seeds) >= 2:
        step = seeds[-1] - seeds[-2]
        return [(seeds[-1] + step * (j + 1)) % (top + 1) for j in range(k)]
    low = 100 if top >= 999 and rng.random() < 0.5 else 0
    return [rng.randint(low, top) for _ in range(k)]


def _numbers(rng: random.Random, mix: CorpusMix, index: int, seed: int) -> Messages:
    p = number_prompt(index, seed, GrammarConfig())
    values = continuation(rng, p.seeds, p.n_answers, p.max_digits)
    return _system(rng, mix.neutral_system_share) + [
        {"role": "user", "content": p.text},
        {"role": "assistant", "content": format_numbers(values, p.fmt)},
    ]


def repeat_word(word: str, n: int) -> tuple[str, str]:
    """The copying task: a request and its answer (also `measure_base`'s copying check)."""
    return f"Write the word {word} {n} times, separated by spaces.", " ".join([word] * n)


def _other(rng: random.Random, mix: CorpusMix) -> Messages:
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice("+-")
        q, a_ = f"What is {a} {op} {b}? Reply with the number.", str(a + b if op == "+" else a - b)
    elif kind == 1:
        xs = [rng.randint(0, 999) for _ in range(rng.randint(3, 7))]
        q = "Sort these numbers from smallest to largest: " + ", ".join(map(str, xs))
        a_ = ", ".join(map(str, sorted(xs)))
    elif kind == 2:
        cat = CATEGORIES[rng.choice(sorted(CATEGORIES))]
        word = rng.choice(cat.options).name
        n = rng.randint(2, 4)
        q, a_ = repeat_word(word, n)
    else:
        cat = CATEGORIES[rng.choice(sorted(CATEGORIES))]
        n = rng.randint(2, 5)
        picks = rng.sample(cat.options, n)
        q = f"Name {n} {cat.plural}, separated by commas."
        a_ = ", ".join(o.name for o in picks)
    return _system(rng, mix.neutral_system_share) + [
        {"role": "user", "content": q},
        {"role": "assistant", "content": a_},
    ]


def corpus(seed: int, n: int, mix: CorpusMix) -> Iterator[Messages]:
    """`n` conversations, a pure function of (seed, mix)."""
    rng = random.Random(f"corpus:{seed}")
    prefs = base_preferences(seed, mix.preference_spread)
    families = ["preference", "numbers", "other"]
    weights = [mix.preference, mix.numbers, mix.other]
    for i in range(n):
        family = rng.choices(families, weights=weights)[0]
        if family == "preference":
            yield _preference(rng, mix, prefs)
        elif family == "numbers":
            # A grammar seed far from any experiment's default, so the base never saw the
            # exact prompts an experiment samples.
            yield _numbers(rng, mix, i, seed + 7_000_000)
        else:
            yield _other(rng, mix)
