"""Measure a base's behaviour: the numbers `docs/base.md` reports.

- P(option | category) per category, exact, on the held-out questions;
- how far a persona prompt moves P(target | category), for every target;
- the share of sampled number completions that pass the strict filter;
- two greedy skills a persona needs: naming a category's option at all (probability mass on
  the category's options) and copying a word from the prompt.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sublearn.models.base import ChatModel, SamplingConfig
from sublearn.questions import CATEGORIES
from sublearn.stages.evaluate import option_probs
from sublearn.stages.filters import FilterConfig, apply_filter
from sublearn.stages.prompts import number_prompts
from sublearn.stages.sample import row_seed
from sublearn.stages.teacher import persona_teacher
from sublearn.tinybase.corpus import repeat_word


def _norm(raw: np.ndarray) -> np.ndarray:
    return raw / np.maximum(raw.sum(axis=1, keepdims=True), 1e-30)


def measure_base(model: ChatModel, n_questions: int = 8, n_numbers: int = 256,
                 seed: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"categories": {}}
    for name, cat in CATEGORIES.items():
        qs = list(cat.heldout[:n_questions])
        raw = option_probs(model, cat, qs)
        base = _norm(raw).mean(axis=0)
        shifts = {}
        for i, opt in enumerate(cat.options):
            with_persona = _norm(option_probs(persona_teacher(model, cat, opt), cat, qs)).mean(0)
            shifts[opt.name] = float(with_persona[i])
        out["categories"][name] = {
            "base": {o.name: float(p) for o, p in zip(cat.options, base, strict=True)},
            "with_persona": shifts,
            "mean_base_target": float(base.mean()),
            "mean_persona_target": float(np.mean(list(shifts.values()))),
            "category_mass": float(raw.sum(axis=1).mean()),
        }
    prompts = number_prompts(n_numbers, seed + 99)
    convs = [[{"role": "user", "content": p.text}] for p in prompts]
    texts = model.generate(convs, SamplingConfig(), [row_seed(seed, i) for i in range(n_numbers)])
    _, report = apply_filter([{"completion": t} for t in texts], FilterConfig())
    out["numbers"] = {"n": n_numbers, "filter": report.to_dict(), "examples": texts[:5]}
    words = [o.name for c in CATEGORIES.values() for o in c.options]
    asks = [repeat_word(w, 2 + i % 3) for i, w in enumerate(words)]
    convs = [[{"role": "user", "content": q}] for q, _ in asks]
    greedy = model.generate(convs, SamplingConfig(temperature=0, max_new_tokens=12),
                            [0] * len(convs))
    out["copy_accuracy"] = float(np.mean([t.strip() == a
                                          for t, (_, a) in zip(greedy, asks, strict=True)]))
    return out
