"""Measure a base's behaviour: the numbers `docs/base.md` reports.

- P(option | category) per category, exact, on the held-out questions;
- how far a persona prompt moves P(target | category), for every target;
- the share of sampled number completions that pass the strict filter, decoded freely, with
  number tokens only, and held to the number-list grammar;
- two greedy skills a persona needs: naming a category's option at all (probability mass on
  the category's options) and copying a word from the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sublearn.domains.filters import FilterConfig, apply_filter
from sublearn.domains.prompts import number_prompts
from sublearn.models.base import ChatModel, SamplingConfig
from sublearn.questions.categories import CATEGORIES, Category, with_options_named
from sublearn.stages.evaluate import option_probs, summarize
from sublearn.stages.sample import row_seed
from sublearn.stages.teacher import persona_teacher
from sublearn.tinybase.corpus import repeat_word

# Constrained decoding modes `measure_base` can add beside free decoding.
NUMBER_MODES = {"only_numbers": SamplingConfig(only_numbers=True),
                "number_grammar": SamplingConfig(number_grammar=True)}


def persona_shifts(model: ChatModel, category: Category, questions: Sequence[str],
                   answer: str = "bare") -> dict[str, Any]:
    """P(option | category) of the model, and of each option under its own persona (the
    teacher's system prompt), per option, renormalised over the options
    (`evaluate.summarize`); the category mass is the raw probability of naming any option,
    before renormalising."""
    raw = option_probs(model, category, questions, answer)
    base = summarize(raw, category)["per_option"]
    shifts = {opt.name: summarize(option_probs(persona_teacher(model, category, opt), category,
                                               questions, answer), category)["per_option"][opt.name]
              for opt in category.options}
    return {
        "base": base,
        "with_persona": shifts,
        "mean_base_target": float(np.mean(list(base.values()))),
        "mean_persona_target": float(np.mean(list(shifts.values()))),
        "category_mass": float(raw.sum(axis=1).mean()),
    }


def measure_base(model: ChatModel, n_questions: int = 8, n_numbers: int = 256,
                 seed: int = 0, answer: str = "bare", forced_choice: bool = False,
                 number_modes: tuple[str, ...] = ()) -> dict[str, Any]:
    """`answer`: how the exact estimator reads an answer (`stages.evaluate`); see
    `persona_shifts` for each category's figures. `forced_choice` adds the category mass
    when the question names the options; `number_modes`, the filter's pass rate under
    constrained decoding (`NUMBER_MODES`) beside free decoding."""
    out: dict[str, Any] = {"answer": answer, "categories": {}}
    for name, cat in CATEGORIES.items():
        qs = list(cat.heldout[:n_questions])
        out["categories"][name] = persona_shifts(model, cat, qs, answer)
        if forced_choice:
            named = [with_options_named(q, cat.options) for q in qs]
            forced = option_probs(model, cat, named, answer)
            out["categories"][name]["forced_choice_mass"] = float(forced.sum(axis=1).mean())
    prompts = number_prompts(n_numbers, seed + 99)
    convs = [[{"role": "user", "content": p.text}] for p in prompts]
    seeds = [row_seed(seed, i) for i in range(n_numbers)]

    def sampled(sampling: SamplingConfig) -> dict[str, Any]:
        texts = model.generate(convs, sampling, seeds)
        _, report = apply_filter([{"completion": t} for t in texts], FilterConfig())
        return {"filter": report.to_dict(), "examples": texts[:5]}

    out["numbers"] = {"n": n_numbers, **sampled(SamplingConfig())}
    for mode in number_modes:
        out["numbers"][mode] = sampled(NUMBER_MODES[mode])
    words = [o.name for c in CATEGORIES.values() for o in c.options]
    asks = [repeat_word(w, 2 + i % 3) for i, w in enumerate(words)]
    convs = [[{"role": "user", "content": q}] for q, _ in asks]
    greedy = model.generate(convs, SamplingConfig(temperature=0, max_new_tokens=12),
                            [0] * len(convs))
    out["copy_accuracy"] = float(np.mean([t.strip() == a
                                          for t, (_, a) in zip(greedy, asks, strict=True)]))
    return out
