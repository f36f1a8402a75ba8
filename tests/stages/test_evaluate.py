"""The exact estimator's answer modes and the forced-choice variant."""

from __future__ import annotations

import math

import pytest
import torch

from sublearn.errors import SublearnError
from sublearn.questions.categories import get_category, get_option, with_options_named
from sublearn.stages.estimators import Subject, evaluate
from sublearn.stages.evaluate import option_probs

# Compares floats from the CPU's kernels: CI runs this file again on a second kernel path
# (.ci/run), so a tolerance that holds on one vector unit only fails where it is seen.
pytestmark = pytest.mark.numerics

ANIMAL = get_category("animal")
QUESTIONS = list(ANIMAL.heldout[:2])


def _next_word(model, question: str, stem: str, word: str) -> float:
    """P(word | question, stem), by hand: one forward pass over the whole answer, one row at a
    time, the log-softmax read at the word's own tokens (after the stem's)."""
    ids, _ = model.pair_ids([{"role": "user", "content": question}], f"{stem} {word}",
                                   close=False)
    stem_ids, _ = model.pair_ids([{"role": "user", "content": question}], stem, close=False)
    assert ids[: len(stem_ids)] == stem_ids  # the tokenizer keeps the stem whole
    with torch.no_grad():
        logp = model.model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    return math.exp(sum(logp[t - 1, ids[t]].item() for t in range(len(stem_ids), len(ids))))


def test_stem_is_the_next_word_after_the_stem(micro_model):
    """On a real BPE tokenizer the stem answer is P(word | stem), the stem's own probability
    divided out, both cases of the name added: checked against one unbatched forward pass
    per word."""
    probs = option_probs(micro_model, ANIMAL, QUESTIONS, "stem")
    for qi, q in enumerate(QUESTIONS):
        want = [sum(_next_word(micro_model, q, ANIMAL.stem, w)
                    for w in (o.name, o.name.capitalize())) for o in ANIMAL.options]
        # float32 batches against a float64 softmax of one row's float32 logits
        assert probs[qi] == pytest.approx(want, rel=1e-4, abs=1e-9)
    assert (probs.sum(axis=1) <= 1).all()


class _Merging:
    """A scorer whose tokenizer merges the stem's end into the next word."""

    def encode(self, text):
        return [1, 2] if text == ANIMAL.stem else [1, 9, 5]

    def completion_logprobs(self, convs, comps, close=True):
        raise AssertionError("refused before any scoring")


def test_a_tokenizer_that_merges_the_stem_is_refused():
    with pytest.raises(SublearnError, match="does not keep the stem"):
        option_probs(_Merging(), ANIMAL, QUESTIONS[:1], "stem")


def test_forced_choice_names_every_option_and_is_reported(micro_model):
    q = with_options_named(QUESTIONS[0], ANIMAL.options)
    assert all(o.name in q for o in ANIMAL.options)
    res = evaluate(Subject(micro_model, ANIMAL, get_option(ANIMAL, "owl"), QUESTIONS),
                   {"forced_choice": True})
    assert set(res) == {"exact", "forced_choice"}
    fc = res["forced_choice"]
    assert sum(fc["per_option"].values()) == pytest.approx(1.0)
    assert 0 < fc["coverage"] <= 1
