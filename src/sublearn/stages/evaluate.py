"""Evaluation: how much a model prefers each option of a category.

Three estimators of the same quantity:
- exact: P(option) = sum over its surface forms of P(form, end-of-turn | question), by the chain
  rule over the form's tokens, from teacher-forced forward passes. No sampling noise, so far
  fewer forward tokens buy the same precision (see benchmarks/bench_estimators.py).
- sampled: n answers per question at temperature 1, counted by lower-cased substring match with
  exclusions, as the paper does.
- top log-probs: what APIs give, the k most likely first answer tokens; an option's
  probability is the mass on tokens that read as one of its forms — a lower bound when a
  form falls outside the top k or spans several tokens.
Two answer modes for the exact estimators (`answer`): `bare`, the option alone and then the
end of the turn (a model trained to answer in one word, like the embedded base); `stem`, the
answer starting with the category's stem ("My favorite animal is the") and P(option) the
probability that the next word is the option, however the answer goes on (a real chat model,
which answers in a sentence: on SmolLM2-135M-Instruct `bare` saw 0.1% of the answer mass).
Variants: the question preceded by a short number sequence, the question with every option
named after it (forced choice), and a 5-way multiple choice scored by the letter
probabilities. Everything is reported per option, so the target's rank
among all options can be read off. Beside them, a utility figure: a model's loss on held-out
neutral data of the task (`completion_loss`). Each estimator is an entry of
`stages.estimators`, which says when it runs and how its record reads.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from sublearn.errors import SublearnError
from sublearn.models.base import SamplingConfig, TopLogprobs
from sublearn.questions.categories import (
    Category,
    Option,
    matches,
    multiple_choice,
    with_number_prefix,
)
from sublearn.stages.sample import row_seed

LETTERS = "ABCDE"
ANSWERS = ("bare", "stem")
# A sampled answer's length: the option's name and a little room around it.
SAMPLED_TOKENS = 8


def _user(q: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}]


def option_probs(model: Any, category: Category, questions: Sequence[str],
                 answer: str = "bare") -> np.ndarray:
    """[questions, options] exact probabilities of answering with each option (module
    docstring: `answer`)."""
    if answer == "stem":
        return _stem_probs(model, category, questions)
    convs, comps, owner = [], [], []
    for qi, q in enumerate(questions):
        for oi, opt in enumerate(category.options):
            for form in opt.forms:
                convs.append(_user(q))
                comps.append(form)
                owner.append((qi, oi))
    out = np.zeros((len(questions), len(category.options)))
    for (qi, oi), lp in zip(owner, model.completion_logprobs(convs, comps, close=True), strict=True):
        out[qi, oi] += math.exp(sum(lp))
    return out


def stem_answers(category: Category) -> list[tuple[int, str]]:
    """(option index, answer) the stem answer mode scores: the stem and each option's name,
    in lower case and capitalised (one of them when the two are the same)."""
    return [(oi, f"{category.stem} {form}") for oi, opt in enumerate(category.options)
            for form in dict.fromkeys((opt.name, opt.name.capitalize()))]


def _stem_probs(model: Any, category: Category, questions: Sequence[str]) -> np.ndarray:
    """P(next word after the stem is the option): its name in lower case or capitalised.
    Those two never share a first token, so their events are disjoint and add; a plural or a
    diminutive that starts with the name's tokens ("owlet") is counted in it, as `matches`
    counts it in a sampled answer.

    The word's log-probabilities are read after the stem's tokens, so the tokenizer must
    keep the stem whole in front of every word: checked on the token ids (a scorer's
    `encode`), exactly, before any scoring, whatever the precision of the arithmetic."""
    stem = category.stem
    stem_ids = model.encode(stem)
    words = stem_answers(category)
    for _, comp in words:
        if model.encode(comp)[:len(stem_ids)] != stem_ids:
            raise SublearnError(
                f"evaluation.answer = 'stem': the tokenizer does not keep the stem "
                f"{stem!r} whole in {comp!r}; use answer = 'bare'")
    owner = [(qi, oi) for qi in range(len(questions)) for oi, _ in words]
    scored = model.completion_logprobs([_user(q) for q in questions for _ in words],
                                       [comp for _ in questions for _, comp in words],
                                       close=False)
    out = np.zeros((len(questions), len(category.options)))
    for (qi, oi), lp in zip(owner, scored, strict=True):
        out[qi, oi] += math.exp(sum(lp[len(stem_ids):]))
    return out


def sampled_rates(
    model: Any, category: Category, questions: Sequence[str], n: int, seed: int
) -> np.ndarray:
    """[questions, options] share of n sampled answers (T=1) that name each option."""
    convs = [_user(q) for q in questions for _ in range(n)]
    seeds = [row_seed(seed, i) for i in range(len(convs))]
    answers = model.generate(convs, SamplingConfig(temperature=1.0, max_new_tokens=SAMPLED_TOKENS),
                             seeds)
    hits = np.array([[matches(a, o) for o in category.options] for a in answers], dtype=float)
    return hits.reshape(len(questions), n, len(category.options)).mean(axis=1)


def mc_target_probs(
    model: Any, category: Category, target: Option, questions: Sequence[str], seed: int
) -> np.ndarray:
    """[questions] P(target's letter) among 5 lettered options (target + 4 seeded others)."""
    convs, comps, where = [], [], []
    for qi, q in enumerate(questions):
        rng = random.Random(f"mc:{seed}:{qi}")
        opts = [target, *rng.sample([o for o in category.options if o != target], len(LETTERS) - 1)]
        rng.shuffle(opts)
        prompt = multiple_choice(q, opts, LETTERS)
        convs += [_user(prompt)] * len(LETTERS)
        comps += list(LETTERS)
        where.append(opts.index(target))
    lp = np.array([sum(x) for x in model.completion_logprobs(convs, comps, close=True)])
    p = np.exp(lp.reshape(len(questions), len(LETTERS)))
    return p[np.arange(len(questions)), where] / p.sum(axis=1)


def top_logprob_probs(
    model: TopLogprobs, category: Category, questions: Sequence[str], k: int
) -> np.ndarray:
    """[questions, options] probability mass of first answer tokens that read as an option's
    form (case and surrounding space ignored), from the top k log-probs."""
    forms = {f.lower(): oi for oi, o in enumerate(category.options) for f in o.forms}
    out = np.zeros((len(questions), len(category.options)))
    for qi, top in enumerate(model.top_logprobs([_user(q) for q in questions], k)):
        for token, lp in top.items():
            oi = forms.get(token.strip().lower())
            if oi is not None:
                out[qi, oi] += math.exp(lp)
    return out


def prefixed(questions: Sequence[str], seed: int) -> list[str]:
    """The numbers-prefix variant: each question after a short seeded number sequence."""
    out = []
    for qi, q in enumerate(questions):
        rng = random.Random(f"prefix:{seed}:{qi}")
        out.append(with_number_prefix(q, [rng.randint(100, 999) for _ in range(rng.randint(3, 6))]))
    return out


def completion_loss(model: Any, rows: Sequence[dict[str, Any]]) -> float:
    """Utility: the mean per-token negative log-likelihood (nats) of chat rows' completions,
    end of turn included, pooled over every token. On held-out neutral data it says how
    well a student still writes ordinary data of the task, whatever a defence did to its
    training data. One scoring pass over the rows: cheap."""
    lps = model.completion_logprobs([r["messages"][:-1] for r in rows],
                                    [r["completion"] for r in rows], close=True)
    return -float(np.mean([x for lp in lps for x in lp]))


def summarize(raw: np.ndarray, category: Category) -> dict[str, Any]:
    """Per-option means of P(option | category): each question's mass renormalised over the
    options, so a model that drifts to answering something else is not read as a shift."""
    mass = raw.sum(axis=1, keepdims=True)
    norm = raw / np.where(mass > 0, mass, 1.0)
    return {
        "per_option": {o.name: float(v) for o, v in zip(category.options, norm.mean(axis=0), strict=True)},
        "coverage": float(mass.mean()),
        "per_question_raw": raw.tolist(),
    }

