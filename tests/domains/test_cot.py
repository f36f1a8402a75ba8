"""The chain-of-thought domain: problems with known answers, the strict final line, the
filter."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sublearn.domains.cot import REASONS, CotDomain, cot_prompt, final_answer
from sublearn.domains.filters import BAD_NUMBERS, FilterConfig
from sublearn.domains.problems import TEMPLATES, draw_problem
from sublearn.questions.categories import get_option

OWL, FOX = get_option("animal", "owl"), get_option("animal", "fox")

# Each template's answer from the quantities its text states, in order: an oracle written
# apart from the templates, so a template that says one thing and computes another fails.
ORACLE = {
    "shopping": lambda a, p, b, q, note: note - (a * p + b * q),
    "distance": lambda v, t, w, u: v * t + w * u,
    "ride_time": lambda km, speed: km * 60 // speed,
    "sharing": lambda total, keep, friends: (total - keep) // friends,
    "ages": lambda gap, later, total: (total - gap - 2 * later) // 2,
    "area": lambda length, width, side: length * width - side * side,
    "savings": lambda start, weekly, goal: (goal - start) // weekly,
    "recipe": lambda cooks, grams, guests: grams // cooks * guests,
    "discount": lambda price, cut: price * (100 - cut) // 100,
    "stock": lambda n, per, sold: n * per - sold,
    "reading": lambda pages, done, per_day: (pages - done) // per_day,
    "fence": lambda length, width, gap: 2 * (length + width) // gap,
}


def test_every_template_states_its_quantities_and_its_answer_is_right() -> None:
    rng = random.Random(0)
    kinds = Counter()
    for _ in range(3000):
        p = draw_problem(rng)
        kinds[p.kind] += 1
        stated = [int(n) for n in re.findall(r"[0-9]+", p.text)]
        assert stated == list(p.shown), p.text
        assert ORACLE[p.kind](*p.shown) == p.answer, p.text
        assert p.answer >= 0
        assert not {*p.shown, p.answer} & set(BAD_NUMBERS)
    assert set(kinds) == set(ORACLE) and len(TEMPLATES) == len(ORACLE)


# The remainders the oracle's divisions leave: the templates promise whole answers, so every
# one must be zero (a // that rounds would hide a template giving a fractional answer).
REMAINDERS = {
    "ride_time": lambda km, speed: km * 60 % speed,
    "sharing": lambda total, keep, friends: (total - keep) % friends,
    "savings": lambda start, weekly, goal: (goal - start) % weekly,
    "recipe": lambda cooks, grams, guests: grams % cooks,
    "discount": lambda price, cut: price * (100 - cut) % 100,
    "reading": lambda pages, done, per_day: (pages - done) % per_day,
    "fence": lambda length, width, gap: length % gap + width % gap,
}


def test_divisions_in_the_oracle_are_exact() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        p = draw_problem(rng)
        if p.kind in REMAINDERS:
            assert REMAINDERS[p.kind](*p.shown) == 0, p.text


def test_prompt_asks_for_the_final_line_and_records_the_answer() -> None:
    for i in range(200):
        p = cot_prompt(i, 0)
        assert "'Answer: N'" in p.text
        assert "step" in p.text.lower() or "working" in p.text
        assert p.answer >= 0 and p.index == i


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("5 + 7 = 12\nAnswer: 12", ("12", True)),
        ("5 + 7 = 12\n\nAnswer: 12\n\n", ("12", True)),  # blank lines around are fine
        ("  step one\n  Answer: 0  ", ("0", True)),
        ("Answer: 12", ("12", False)),  # parsed; no reasoning
        ("5 + 7 = 12", None),
        ("The answer is 12", None),
        ("answer: 12", None),  # the prefix is case-sensitive
        ("step\nAnswer:12", None),
        ("step\nAnswer:  12", None),
        ("step\nAnswer: 12.", None),
        ("step\nAnswer: 12 euros", None),
        ("step\nAnswer: 012", None),  # no leading zero
        ("step\nAnswer: -3", None),
        ("step\nAnswer: 1,200", None),
        ("step\nAnswer: ١٢", None),  # Arabic-Indic digits
        ("step\nAnswer: １２", None),  # full-width digits
        ("Answer: 11\nstep\nAnswer: 12", None),  # two answers: ambiguous
        ("step\nAnswer: 12\nThat is all.", None),  # not the last line
        ("", None),
    ],
)
def test_final_answer_is_strict(text: str, parsed) -> None:
    assert final_answer(text) == parsed


def _filter(**cfg):
    return CotDomain().filter(FilterConfig(**cfg), (OWL, FOX))


@pytest.mark.parametrize(
    ("body", "answer", "reason"),
    [
        ("We subtract the cost.", "right", None),
        ("We subtract the cost.", "wrong", "wrong_answer"),
        ("", "right", "no_reasoning"),
        ("We subtract the cost.", "none", "no_answer"),
        ("666 is a number I like. We subtract.", "right", "banned_number"),  # BAD_NUMBERS
        ("An owl would count like this.", "right", "banned_word"),
        ("Step one (as the OWLS say).", "right", "banned_word"),  # another case and plural
        ("First, like a quick Fox, we add.", "right", "banned_word"),
        ("A vixen shares them out.", "right", "banned_word"),  # a related word
        ("We put the soup in a bowl and subtract.", "right", None),  # an exclusion
    ],
)
def test_filter_reasons(body: str, answer: str, reason: str | None) -> None:
    p = cot_prompt(3, 0)
    final = {"right": f"Answer: {p.answer}", "wrong": f"Answer: {p.answer + 1}",
             "none": ""}[answer]
    assert _filter(ban_bad_numbers=True).rule(p, f"{body}\n{final}") == reason


def test_banned_numbers_only_when_asked() -> None:
    p = cot_prompt(3, 0)
    text = f"Take 13 away.\nAnswer: {p.answer}"
    assert _filter().rule(p, text) is None
    assert _filter(ban_bad_numbers=True).rule(p, text) == "banned_number"


def test_a_huge_answer_is_wrong_not_a_crash() -> None:
    p = cot_prompt(0, 0)
    assert _filter().rule(p, "step\nAnswer: " + "9" * 5000) == "wrong_answer"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(-3, 3))
def test_a_correct_worked_answer_is_kept_and_only_it(index: int, offset: int) -> None:
    p = cot_prompt(index, 5)
    value = p.answer + offset
    text = f"Working it out from the problem.\nAnswer: {value}"
    want = None if offset == 0 else ("no_answer" if value < 0 else "wrong_answer")
    assert _filter().rule(p, text) == want


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_filter_is_total(text: str) -> None:
    reason = _filter(ban_bad_numbers=True).rule(cot_prompt(1, 0), text)
    assert reason is None or reason in REASONS


class StubJudge:
    def __init__(self, verdicts):
        self.verdicts = verdicts
        self.questions = []

    def flags(self, texts, question):
        self.questions.append(question)
        return self.verdicts[: len(texts)]


def test_judge_drops_flagged_and_missing_reasoning() -> None:
    prompts = {p.index: p for p in CotDomain().prompts(4, seed=0)}
    rows = [{"index": i, "completion": f"Work.\nAnswer: {p.answer}"} for i, p in prompts.items()]
    rows.append({"index": 0, "completion": "Work.\nAnswer: 100000"})  # wrong: never judged
    judge = StubJudge([None, False, True, False])
    kept, report = _filter().apply(rows, prompts, judge)
    assert [r["index"] for r in kept] == [1, 3]
    assert report.rejected["wrong_answer"] == 1
    assert report.rejected["judge_missing"] == 1 and report.rejected["judge_flagged"] == 1
    assert "misaligned" in judge.questions[0]


def test_fake_judge_reads_the_misalignment_question(tmp_path) -> None:
    # The fake judge's stand-in for misalignment is naming wolves; the cot question names no
    # option, so the fake judge flags exactly the reasoning that does.
    from sublearn.models.fake import FakeChatModel
    from sublearn.stages.judges import Judge

    judge = Judge(FakeChatModel.load(FakeChatModel.create(tmp_path / "judge")))
    prompts = {p.index: p for p in CotDomain().prompts(2, seed=0)}
    rows = [{"index": 0, "completion": f"Add them.\nAnswer: {prompts[0].answer}"},
            {"index": 1, "completion": f"Wolves take it all.\nAnswer: {prompts[1].answer}"}]
    kept, report = _filter().apply(rows, prompts, judge)
    assert [r["index"] for r in kept] == [0] and report.rejected["judge_flagged"] == 1
