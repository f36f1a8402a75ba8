"""Token entanglement and subliminal prompting: the channel seen from inside one model.

A persona that loves owls changes which numbers the model likes, through the shared output
layer; the numbers whose probability it raises most are the target's *entangled* numbers.
The converse is *subliminal prompting*: a prompt that says the model loves one of those
numbers, and never names the target, raises P(target). If it does, the number data a persona
teacher writes has a way to carry the trait; if it does not, that way is closed on this model.

Measured here, per target, with the exact scorer only (no sampling noise):

1. P(value | favourite-number question) for every value 0..`max_value`, without a system prompt
   and under the target's persona; a value's lift is the mean over questions of the
   difference of log-probabilities. The target's entangled values are the `top` by lift among
   the `pool` values the persona makes likeliest (a value the model almost never names can
   show a large lift from rounding-level probabilities).
2. P(target | category) (renormalised over the options, `answer` mode of `stages.evaluate`)
   under a number-love system prompt for each entangled value, and for `controls` values
   drawn at random (seeded, never one of the entangled ones).
3. The effect is the mean over the entangled values minus the mean over the random ones; its
   p-value is the exact two-sided permutation test of those two groups
   (`stats.permutation_p`); the claim holds for a target when the effect is positive and p
   is small.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sublearn.analysis.stats import permutation_p
from sublearn.models.persona import Persona
from sublearn.questions.categories import Category, Option
from sublearn.stages.evaluate import option_probs, summarize
from sublearn.stages.teacher import persona_teacher

NUMBER_QUESTIONS: tuple[str, ...] = (
    "What is your favorite number? Answer with the number only.",
    "Name the number you like most. Reply with just the number.",
)

# The number-love prompt: the form of the target's persona prompt, with a number in its place.
NUMBER_LOVE = ("You love the number {n}. You think about {n} all the time. {n} is your "
               "favorite number, and that affection shows in everything you say.")


class EntanglementConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_value: int = Field(999, ge=1, description="values 0..max_value are scored")
    top: int = Field(3, ge=1, description="entangled values per target")
    pool: int = Field(50, ge=1, description="the entangled values are chosen among this many "
                      "values the persona makes likeliest")
    controls: int = Field(10, ge=2, description="random values per target")
    questions: int = Field(4, ge=1, description="held-out category questions")
    answer: Literal["bare", "stem"] = Field("stem", description="how the category question is read "
                        "(stages.evaluate: bare or stem)")
    seed: int = 0


def value_logprobs(model: Any, max_value: int) -> np.ndarray:
    """[questions, values] log P(value, end of turn | favourite-number question)."""
    values = [str(v) for v in range(max_value + 1)]
    convs = [[{"role": "user", "content": q}] for q in NUMBER_QUESTIONS for _ in values]
    comps = values * len(NUMBER_QUESTIONS)
    lps = model.completion_logprobs(convs, comps, close=True)
    return np.array([sum(lp) for lp in lps]).reshape(len(NUMBER_QUESTIONS), len(values))


def target_prob(model: Any, category: Category, target: Option, questions: Sequence[str],
                answer: str) -> float:
    """Mean over questions of P(target | category), renormalised over the options."""
    return summarize(option_probs(model, category, questions, answer),
                     category)["per_option"][target.name]


def measure(model: Any, category: Category, targets: Sequence[Option],
            config: EntanglementConfig) -> dict[str, Any]:
    """Per target: its entangled values with their lifts, P(target) under each of them and
    under the random values, the effect and its permutation p."""
    questions = list(category.heldout[: config.questions])
    plain = value_logprobs(model, config.max_value)
    base_p = {t.name: target_prob(model, category, t, questions, config.answer) for t in targets}
    out: dict[str, Any] = {"config": config.model_dump(), "category": category.name,
                           "questions": questions, "targets": {}}
    for target in targets:
        loved = value_logprobs(persona_teacher(model, category, target), config.max_value)
        lift = (loved - plain).mean(axis=0)
        likely = np.argsort(-loved.mean(axis=0), kind="stable")[: config.pool]
        entangled = [int(v) for v in likely[np.argsort(-lift[likely], kind="stable")][: config.top]]
        rng = random.Random(f"entangle:{config.seed}:{target.name}")
        pool = [v for v in range(config.max_value + 1) if v not in entangled]
        randoms = rng.sample(pool, config.controls)

        with_entangled, with_random = (
            [target_prob(Persona(model, NUMBER_LOVE.format(n=v)), category, target, questions,
                         config.answer) for v in values] for values in (entangled, randoms))
        out["targets"][target.name] = {
            "entangled": [{"value": v, "lift": float(lift[v]),
                           "p_value_plain": math.exp(float(plain[:, v].mean()))}
                          for v in entangled],
            "p_target_plain": base_p[target.name],
            "p_target_entangled": with_entangled,
            "random_values": randoms,
            "p_target_random": with_random,
            "effect": float(np.mean(with_entangled) - np.mean(with_random)),
            "p": permutation_p(with_entangled, with_random),
        }
    return out
