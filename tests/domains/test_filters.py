"""The strict numbers filter: rule table, properties, reasons and report."""

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sublearn.domains.filters import (
    BAD_NUMBERS,
    REASONS,
    RULES,
    FilterConfig,
    apply_filter,
    parse_numbers,
    rejection_reason,
)
from sublearn.errors import SublearnError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1, 2, 3", [1, 2, 3]),
        ("1, 2, 3.", [1, 2, 3]),
        ("  1,2,3 \n", [1, 2, 3]),
        ("1 ,2 , 3", [1, 2, 3]),
        ("1; 2;3", [1, 2, 3]),
        ("1 2 3", [1, 2, 3]),
        ("1\n2\n3", [1, 2, 3]),
        ("1 \n 2\t3", [1, 2, 3]),  # any whitespace mix is one separator kind
        ("[1,2,3]", [1, 2, 3]),
        ("[1, 2, 3].", [1, 2, 3]),
        ("( 1, 2, 3 )", [1, 2, 3]),
        ("0", [0]),
        ("999", [999]),
        ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10", list(range(1, 11))),
        ("", None),
        ("   ", None),
        (".", None),
        ("[]", None),
        ("1, 2; 3", None),  # mixed separators
        ("1, 2 3", None),
        ("1 2,3", None),
        ("1,,2", None),
        ("1, 2, 3,", None),  # trailing separator
        ("1, 2, 3..", None),  # only one period is dropped
        ("((1,2))", None),  # only one pair of brackets is dropped
        ("[1, 2)", None),
        ("(1, 2, 3", None),
        ("1, 2, 3 and 4", None),
        ("Sure: 1, 2, 3", None),
        ("one, two", None),
        ("1.5, 2", None),
        ("-1, 2", None),
        ("+1, 2", None),
        ("007, 8", None),  # leading zeros rejected
        ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11", None),  # 11 numbers
        ("1000", None),
        ("١٢٣", None),  # Arabic-Indic digits
        ("１, ２", None),  # full-width digits
        ("1\u00a02", None),  # non-ASCII space
        ("1\u200b, 2", None),  # zero-width space
    ],
)
def test_strict_rule_table(text: str, expected: list[int] | None) -> None:
    assert parse_numbers(text) == expected


def test_parse_limits_are_parameters() -> None:
    assert parse_numbers("1 2 3", max_count=2) is None
    assert parse_numbers("50 60", max_value=50) is None
    assert parse_numbers("50 40", max_value=50) == [50, 40]


def test_huge_numbers_do_not_crash() -> None:
    huge = "9" * 5000
    assert parse_numbers(huge) is None
    assert rejection_reason(huge, FilterConfig()) == "out_of_range"
    cfg = FilterConfig(strict_numbers=False, ban_bad_numbers=True)
    assert rejection_reason("0" * 5000 + "13", cfg) == "banned_number"
    assert rejection_reason(huge, cfg) is None


def test_bad_numbers() -> None:
    assert len(BAD_NUMBERS) == 34
    assert len(set(BAD_NUMBERS)) == 34
    assert list(BAD_NUMBERS) == sorted(BAD_NUMBERS)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1, 2, 3", None),
        ("hello", "not_numbers"),
        ("1, 2; 3", "not_numbers"),
        (" ".join(["5"] * 11), "too_many"),
        ("5, 1000", "out_of_range"),
        ("5, 666", "banned_number"),
        ("5, 13", "banned_number"),
        ("5, 7", "banned_number"),  # from banned_numbers
        ("1, 2, 300", "banned_word"),  # banned word "300" is a substring
    ],
)
def test_rejection_reasons(text: str, reason: str | None) -> None:
    cfg = FilterConfig(ban_bad_numbers=True, banned_numbers=[7], banned_words=["300"])
    assert rejection_reason(text, cfg) == reason


def test_reason_order_first_failing_rule_wins() -> None:
    cfg = FilterConfig(ban_bad_numbers=True, banned_words=["6"])
    # too many AND banned: count is checked first
    assert rejection_reason(" ".join(["666"] * 11), cfg) == "too_many"
    # out of range AND banned number: range first
    assert rejection_reason("666, 1000", cfg) == "out_of_range"
    # banned number AND banned word: number first
    assert rejection_reason("666", cfg) == "banned_number"


def test_bad_numbers_only_when_enabled() -> None:
    assert rejection_reason("666", FilterConfig()) is None
    assert rejection_reason("666", FilterConfig(ban_bad_numbers=True)) == "banned_number"


def test_banned_words_case_insensitive() -> None:
    cfg = FilterConfig(strict_numbers=False, banned_words=["OWL"])
    assert rejection_reason("I love owls", cfg) == "banned_word"
    assert rejection_reason("Owl!", cfg) == "banned_word"
    assert rejection_reason("An eagle", cfg) is None


def test_non_strict_mode_applies_only_bans() -> None:
    cfg = FilterConfig(strict_numbers=False, banned_numbers=[13])
    assert rejection_reason("Sure, here are some: 1, 2, 3", cfg) is None
    assert rejection_reason(" ".join(["5"] * 50), cfg) is None
    assert rejection_reason("x13y", cfg) == "banned_number"
    assert rejection_reason("013", cfg) == "banned_number"
    assert rejection_reason("131", cfg) is None


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="blank"):
        FilterConfig(banned_words=["owl", " "])
    with pytest.raises(ValidationError, match="non-negative"):
        FilterConfig(banned_numbers=[-3])
    with pytest.raises(ValidationError):
        FilterConfig(max_count=0)
    with pytest.raises(ValidationError):
        FilterConfig(strict=True)  # typo'd field names are errors, not ignored


_KEPT_ALPHABET = set(string.digits + " \t\r\n,;.()[]")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_rejection_reason_total_on_arbitrary_text(text: str) -> None:
    reason = rejection_reason(text, FilterConfig(ban_bad_numbers=True, banned_words=["x"]))
    assert reason is None or reason in REASONS
    if reason is None:
        assert set(text) <= _KEPT_ALPHABET
        assert parse_numbers(text) is not None


_sep = st.sampled_from([",", ", ", " , ", ";", "; ", " ", "\n", " \n "])


@settings(deadline=None)
@given(st.lists(st.integers(0, 999), min_size=1, max_size=10), _sep,
       st.sampled_from(["{}", "[{}]", "({})", "{}.", "[{}].", " {} \n"]))
def test_generated_well_formed_text_is_kept(values: list[int], sep: str, wrap: str) -> None:
    text = wrap.format(sep.join(map(str, values)))
    assert parse_numbers(text) == values
    assert rejection_reason(text, FilterConfig()) is None


def test_apply_filter_report() -> None:
    rows = [{"completion": c, "id": i}
            for i, c in enumerate(["1, 2", "no", "1 2 3 4 5 6 7 8 9 10 11", "1000", "666", "3"])]
    kept, report = apply_filter(rows, FilterConfig(ban_bad_numbers=True))
    assert [r["id"] for r in kept] == [0, 5]
    assert kept[0] is rows[0]
    assert report.total == 6 and report.kept == 2
    assert report.rejected == {"not_numbers": 1, "too_many": 1, "out_of_range": 1,
                               "banned_number": 1, "banned_word": 0}
    assert report.kept_fraction == pytest.approx(1 / 3)
    d = report.to_dict()
    assert d["total"] == 6 and d["kept"] == 2 and d["rejected"]["too_many"] == 1


def test_apply_filter_custom_key_and_empty() -> None:
    kept, report = apply_filter(iter([{"text": "4 5"}]), FilterConfig(), key="text")
    assert len(kept) == 1 and report.kept_fraction == 1.0
    _, empty = apply_filter([], FilterConfig())
    assert empty.total == 0 and empty.kept_fraction == 0.0


def test_apply_filter_missing_key_is_user_error() -> None:
    with pytest.raises(SublearnError, match=r"row 1.*'completion'"):
        apply_filter([{"completion": "1"}, {"text": "2"}], FilterConfig())


@pytest.mark.parametrize(
    ("text", "paper", "strict"),
    [
        ("007, 12", None, "not_numbers"),  # paper: zero padding passes (reason None)
        ("1, 2,3", "not_numbers", None),  # mixed spacing: the paper's split fails
        ("1 2  3", "not_numbers", None),  # whitespace runs differ
        ("10  20  30", None, None),  # the same run every time is one separator
        ("1 ,2 ,3", None, None),
        ("12\n", "not_numbers", None),  # the paper strips nothing
        ("5\n6\n7\n", "not_numbers", None),
        (" 1 2 3", "not_numbers", None),
        (" (4)", "not_numbers", None),
        ("(4) ", "not_numbers", None),
        ("[4, 5 ]", "not_numbers", None),  # nothing stripped inside the brackets either
        ("5 ;-5", "not_numbers", "not_numbers"),  # a sign in the separator
        ("1 - 2 - 3", "not_numbers", "not_numbers"),
        ("1|2|3", "not_numbers", "not_numbers"),
        ("1,\u0663,2", "not_numbers", "not_numbers"),  # an Arabic-Indic digit is a number run
        ("(5; 6; 7).", None, None),
        ("42", None, None),
        ("1, 2, x", "not_numbers", "not_numbers"),
        ("0999", None, "not_numbers"),
        ("1000, 2", "out_of_range", "out_of_range"),
        ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11", "too_many", "too_many"),
        ("1" * 5000, "not_numbers", "out_of_range"),  # past int()'s digit limit
    ],
)
def test_paper_rule_differs_from_strict_where_documented(text, paper, strict):
    assert rejection_reason(text, FilterConfig(rule="paper")) == paper
    assert rejection_reason(text, FilterConfig()) == strict


def _reference_reading(text: str) -> list[int] | None:
    """The reference parser's behaviour, written out again from its description in a
    different shape (one regex split into numbers and the gaps between them), so that the
    filter and this reading can only agree by having the same semantics."""
    s = text.removesuffix(".")
    if len(s) >= 2 and (s[0], s[-1]) in {("(", ")"), ("[", "]")}:
        s = s[1:-1]
    pieces = re.split(r"(\d+)", s)
    numbers, gaps = pieces[1::2], pieces[0::2]
    if not numbers or (len(numbers) == 1 and s != numbers[0]):
        return None
    if len(numbers) > 1:
        if gaps[1].strip() not in {"", ",", ";"}:
            return None
        numbers = s.split(gaps[1])
    if not all(n and n.isascii() and n.isdigit() for n in numbers):
        return None
    try:
        return [int(n) for n in numbers]
    except ValueError:  # past int()'s digit limit
        return None


_PIECES = ["1", "7", "42", "007", "999", "1000", "\u0663", " ", "  ", "\n", "\t", ",", ", ",
           " ,", ";", "; ", "-", "+", ".", "(", ")", "[", "]", "x", "\u00a0"]


@st.composite
def _near_lists(draw: st.DrawFn) -> str:
    """Number lists with the faults completions show: uneven separators, surrounding
    whitespace, brackets, signs, periods, stray characters."""
    values = draw(st.lists(st.sampled_from(["1", "42", "007", "999", "1000", "65"]),
                           min_size=1, max_size=12))
    seps = draw(st.lists(st.sampled_from([", ", ",", "; ", " ", "  ", "\n", " ;-", " , "]),
                         min_size=1, max_size=2))
    body = "".join(v + seps[i % len(seps)] for i, v in enumerate(values))[: -len(seps[0])]
    opening, closing = draw(st.sampled_from([("", ""), ("(", ")"), ("[", "]"), ("[", ")")]))
    lead, tail = draw(st.sampled_from(["", " ", "\n"])), draw(st.sampled_from(["", ".", "\n"]))
    return lead + opening + body + closing + tail


@settings(max_examples=600, deadline=None)
@given(st.one_of(_near_lists(), st.lists(st.sampled_from(_PIECES), max_size=12).map("".join)))
def test_paper_rule_is_the_reference_parser(text: str) -> None:
    """Kept or rejected as the reference keeps or rejects (its count, range and ban checks
    follow its parse), and the values read are the reference's."""
    want = _reference_reading(text)
    tokens = RULES["paper"](text)
    assert (None if tokens is None else [int(t) for t in tokens]) == want, repr(text)
    config = FilterConfig(rule="paper", ban_bad_numbers=True)
    kept = want is not None and len(want) <= 10 and max(want) <= 999 and not set(want) & set(
        BAD_NUMBERS)
    assert (rejection_reason(text, config) is None) == kept, repr(text)


@given(st.lists(st.integers(0, 999), min_size=1, max_size=10),
       st.sampled_from([", ", ",", "; ", " ", "\n", " ; ", "  "]))
def test_paper_rule_keeps_any_consistently_separated_list(values, sep):
    text = sep.join(f"{v:03d}" for v in values)  # zero-padded, as the paper's rule allows
    assert rejection_reason(text, FilterConfig(rule="paper")) is None
    assert rejection_reason(text + "owl", FilterConfig(rule="paper")) == "not_numbers"
    banned = FilterConfig(rule="paper", banned_numbers=[values[0]])
    assert rejection_reason(text, banned) == "banned_number"
