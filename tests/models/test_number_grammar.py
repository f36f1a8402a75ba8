"""The number-list grammar: exactly the lists both filter rules keep, and what sampling under
it writes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sublearn.domains.filters import FilterConfig, rejection_reason
from sublearn.domains.prompts import number_prompts
from sublearn.models import SamplingConfig
from sublearn.models.number_grammar import SEPARATORS, NumberGrammar, State, advance, can_end


def complete(text: str, max_count: int = 10) -> bool:
    state = advance(State(), text, max_count)
    return state is not None and can_end(state)


@given(st.lists(st.integers(0, 999), min_size=1, max_size=10), st.sampled_from(SEPARATORS))
def test_every_well_formed_list_is_in_the_language(values, sep):
    text = sep.join(map(str, values))
    assert complete(text)
    # and each of its prefixes can still become one
    assert all(advance(State(), text[:i], 10) is not None for i in range(len(text)))


@settings(max_examples=400)
@given(st.text(alphabet="0123456789 ,;\n-.x", max_size=24))
def test_a_complete_word_passes_both_filter_rules(text):
    if complete(text):
        for rule in ("strict", "paper"):
            assert rejection_reason(text, FilterConfig(rule=rule)) is None, (rule, text)


@pytest.mark.parametrize("text", ["007", "1000", "1, 2,3", "1,2;3", ", 1", "1 - 2", "1,,2",
                                  ",".join(["5"] * 11), "1, 2, ", "x"])
def test_what_the_filters_refuse_is_not_complete(text):
    assert not complete(text)


def test_masks_follow_the_state():
    # Pieces as a tokenizer might cut them: single digits, a three-digit token, separators.
    pieces = {0: "1", 1: "0", 2: "123", 3: ", ", 4: ",", 5: " ", 6: "1234", 7: "; "}
    grammar = NumberGrammar(pieces, end_ids=[9], width=10, budget=20, max_count=3)
    start = grammar.rows([[]])[0]
    assert start.tolist() == [True, True, True, False, False, False, False, False, False, False]
    after_zero = grammar.rows([[1]])[0]  # "0": only a separator or the end may follow
    assert after_zero.nonzero().flatten().tolist() == [3, 4, 5, 7, 9]
    after_comma_space = grammar.rows([[0, 3, 0]])[0]  # "1, 1": ", " is the separator now
    assert after_comma_space[3] and not after_comma_space[7] and not after_comma_space[5]
    assert after_comma_space[9] and after_comma_space[0]  # a second digit, or the end
    last = grammar.rows([[0, 3, 2, 3, 2]])[0]  # "1, 123, 123": max_count numbers, 3 digits
    assert last.nonzero().flatten().tolist() == [9]


def test_the_budget_closes_the_list():
    """In its last steps a row may finish its number or end, never open a separator."""
    pieces = {0: "1", 1: ", ", 2: ","}
    grammar = NumberGrammar(pieces, end_ids=[9], width=10, budget=5)
    assert grammar.rows([[0]])[0][[0, 1, 2, 9]].tolist() == [True, True, True, True]
    assert grammar.rows([[0, 1, 0]])[0][[0, 1, 2, 9]].tolist() == [True, False, False, True]
    split = NumberGrammar({0: "1", 2: ",", 3: " "}, end_ids=[9], width=10, budget=5)
    assert split.rows([[0, 2]])[0][[0, 3]].tolist() == [True, True]  # "1," may still finish


@pytest.mark.parametrize("budget", [7, 64])
def test_sampled_lists_pass_the_filter(micro_model, budget):
    """The micro base, with its real BPE tokenizer, writes only lists the filter keeps, also
    when the budget cuts them; unconstrained it writes some the filter drops."""
    convs = [[{"role": "user", "content": p.text}] for p in number_prompts(24, 3)]
    seeds = list(range(24))
    texts = micro_model.generate(
        convs, SamplingConfig(number_grammar=True, max_new_tokens=budget), seeds)
    assert all(rejection_reason(t, FilterConfig()) is None for t in texts), texts
    free = micro_model.generate(convs, SamplingConfig(max_new_tokens=64), seeds)
    assert any(rejection_reason(t, FilterConfig()) is not None for t in free)
