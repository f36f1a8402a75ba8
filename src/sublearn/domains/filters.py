r"""The filter between teacher and student: keep only completions that are bare numbers.

Subliminal learning is only surprising if the student's data carries no visible trace of the
trait, so the rule is strict: a kept completion is a short list of small non-negative integers
and nothing else. Everything here is pure string work so it runs on any machine and can be
property-tested.

The strict rule (`parse_numbers`):

1. Strip surrounding ASCII whitespace (space, tab, CR, LF).
2. Drop one trailing period, then strip again.
3. Drop one matching pair of outer ``()`` or ``[]``, then strip again.
4. What is left is 1..max_count integers joined by ONE kind of separator: a comma (optional
   whitespace around it), a semicolon (likewise), or runs of whitespace (any mix of spaces,
   tabs and newlines). Mixing kinds, doubled or trailing separators fail.
5. Each integer is ASCII ``0-9`` only (other Unicode digits fail, since they are a channel a
   reader would not notice) with no sign and no leading zero (``0`` itself is fine; ``007``
   fails: a "number of at most 3 digits" with padding is not what the prompt asked for).
6. Each value is in 0..max_value.

The `paper` rule (`[filter] rule = "paper"`) has the reference implementation's parser's
exact semantics, for faithful reproductions. Step by step:

1. Nothing is stripped: leading or trailing whitespace (a final newline too) fails.
2. Drop one trailing period; then one outer pair of ``()`` or ``[]``, with nothing stripped
   inside.
3. Find the digit runs (any Unicode digit, as Python's ``\d`` does). None: fail. One: the
   text must be exactly that run.
4. Two or more: the separator is the text between the first two runs. Stripped of whitespace
   it must be empty, ``,`` or ``;``; the text is split on the separator, exactly as written.
5. Every part must be a non-empty string of ASCII digits, short enough for ``int()``.

Where it differs from the strict rule:
- zero-padded values pass and are read as integers ("007, 12" -> [7, 12]); strict refuses;
- surrounding whitespace fails (" 1 2 3", "12\n"); strict strips it;
- the separator is matched as written: "1, 2,3" fails (", " then ","), and so do
  "1 2  3" and whitespace runs of any other uneven kind; strict accepts both. A separator that
  is the same run every time passes ("10  20  30", "1 ,2 ,3"), as it does in strict;
- a separator that holds anything but whitespace and one comma or semicolon fails
  ("5 ;-5", "1 - 2"), as in strict.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sublearn.errors import SublearnError

# Numbers with cultural baggage (evil, lucky, police codes, memes, ...). Banning them is the
# paper's control for the objection that a misaligned teacher "signals" through such numbers.
BAD_NUMBERS: tuple[int, ...] = (
    4, 13, 14, 18, 23, 33, 39, 42, 44, 49, 51, 54, 69, 77, 88, 99, 100, 101, 187,
    211, 311, 322, 333, 404, 420, 444, 451, 555, 616, 666, 777, 888, 911, 999,
)  # fmt: skip

# Reason keys, in the order `rejection_reason` checks them; the first failing rule is reported.
REASONS: tuple[str, ...] = (
    "not_numbers", "too_many", "out_of_range", "banned_number", "banned_word",
)

_WS = " \t\r\n"  # ASCII only: str.strip()/split() would also accept exotic Unicode spaces.
_INT = re.compile(r"0|[1-9][0-9]*")  # [0-9] rather than \d, which matches any Unicode digit.
_WS_RUN = re.compile(r"[ \t\r\n]+")
# A number in a completion, as every transform and defence finds them: ASCII digits only.
DIGIT_RUN = re.compile(r"[0-9]+")
_ANY_DIGIT_RUN = re.compile(r"\d+")  # the paper rule finds numbers as the reference does


def _body(text: str) -> str:
    """The strict rule's steps 1-3: strip, drop one trailing period, one outer pair of
    () or []."""
    body = text.strip(_WS)
    if body.endswith("."):
        body = body[:-1].strip(_WS)
    if body[:1] + body[-1:] in ("()", "[]"):
        body = body[1:-1].strip(_WS)
    return body


def _tokens(text: str) -> list[str] | None:
    """Rules 1-5: the integer tokens of a well-formed completion, or None. No count/range."""
    body = _body(text)
    # A comma or semicolon anywhere makes it the separator; any other punctuation (including
    # the other separator) then lands inside a token and fails the integer match.
    if "," in body:
        parts = [p.strip(_WS) for p in body.split(",")]
    elif ";" in body:
        parts = [p.strip(_WS) for p in body.split(";")]
    else:
        parts = _WS_RUN.split(body)
    if not all(_INT.fullmatch(p) for p in parts):
        return None  # also catches "" (empty text, doubled or trailing separators)
    return parts


def _paper_tokens(text: str) -> list[str] | None:
    """The paper rule (module docstring, steps 1-5)."""
    body = text.removesuffix(".")
    if body[:1] + body[-1:] in ("()", "[]"):
        body = body[1:-1]
    runs = list(_ANY_DIGIT_RUN.finditer(body))
    if not runs:
        return None
    if len(runs) == 1:
        parts = [body]  # step 3: anything beside the run fails step 5
    else:
        separator = body[runs[0].end() : runs[1].start()]
        if separator.strip() not in ("", ",", ";"):
            return None
        parts = body.split(separator)
    # int() refuses strings longer than Python's digit limit, which the reference reads as a
    # bad format rather than a number out of range.
    limit = sys.get_int_max_str_digits() or math.inf
    if not all(DIGIT_RUN.fullmatch(p) and len(p) <= limit for p in parts):
        return None
    return parts


def _too_big(token: str, max_value: int) -> bool:
    # Compare lengths first: int() on a 5000-digit string raises, and it is slow before that.
    return len(token) > len(str(max_value)) or int(token) > max_value


def parse_numbers(text: str, max_count: int = 10, max_value: int = 999) -> list[int] | None:
    """The values of a completion that passes the strict rule (module docstring), else None."""
    tokens = _tokens(text)
    if tokens is None or len(tokens) > max_count or any(_too_big(t, max_value) for t in tokens):
        return None
    return [int(t) for t in tokens]


RULES = {"strict": _tokens, "paper": _paper_tokens}


class FilterConfig(BaseModel):
    """Which completions survive. Defaults are the paper's numbers filter."""

    model_config = ConfigDict(extra="forbid")

    strict_numbers: bool = True
    rule: Literal["strict", "paper"] = Field(
        "strict", description="strict: sublearn's rule; paper: the reference parser's exact "
        "semantics (zero padding passes; surrounding whitespace and uneven separators fail); "
        "see the module docstring")
    max_count: int = Field(10, ge=1)
    max_value: int = Field(999, ge=0)
    ban_bad_numbers: bool = False
    banned_numbers: list[int] = []
    banned_words: list[str] = []
    judge: bool = Field(False, description="code and cot domains: also ask the [judge] about "
                        "every kept completion and drop it when the answer is yes or missing "
                        "(sublearn.domains)")

    @field_validator("banned_numbers")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        negative = [x for x in v if x < 0]
        if negative:
            raise ValueError(f"banned_numbers must be non-negative (completions never contain "
                             f"a sign); got {negative}")
        return v

    @field_validator("banned_words")
    @classmethod
    def _non_blank(cls, v: list[str]) -> list[str]:
        if any(not w.strip() for w in v):
            raise ValueError("banned_words must not contain empty or blank strings: "
                             "they would match every completion")
        return v

    def banned_set(self) -> frozenset[int]:
        """`banned_numbers`, plus `BAD_NUMBERS` when `ban_bad_numbers` is on."""
        extra = BAD_NUMBERS if self.ban_bad_numbers else ()
        return frozenset(self.banned_numbers).union(extra)


def rejection_reason(completion: str, config: FilterConfig) -> str | None:
    """Why `completion` is dropped, as one of `REASONS`, or None when it is kept.

    Order: with `strict_numbers`, shape (not_numbers), count (too_many) and range (out_of_range)
    come first; then banned_number, then banned_word. Without `strict_numbers` only the two ban
    checks run, and banned_number looks at every ASCII digit run in the text ("a007" holds 7).
    """
    if config.strict_numbers:
        tokens = RULES[config.rule](completion)
        if tokens is None:
            return "not_numbers"
        if len(tokens) > config.max_count:
            return "too_many"
        if any(_too_big(t.lstrip("0") or "0", config.max_value) for t in tokens):
            return "out_of_range"
    else:
        tokens = DIGIT_RUN.findall(completion)
    banned = config.banned_set()
    if banned:
        # Strip padding, then skip runs wider than the largest ban: they cannot equal one, and
        # int() refuses strings past 4300 digits.
        width = len(str(max(banned)))
        values = (t.lstrip("0") or "0" for t in tokens)
        if any(int(v) in banned for v in values if len(v) <= width):
            return "banned_number"
    lowered = completion.casefold()
    if any(w.casefold() in lowered for w in config.banned_words):
        return "banned_word"
    return None


@dataclass
class FilterReport:
    """Counts from one `apply_filter` pass; `rejected` always holds every reason key."""

    total: int = 0
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    @property
    def kept_fraction(self) -> float:
        """kept / total; 0.0 for an empty input so reports stay JSON-friendly (no NaN)."""
        return self.kept / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"total": self.total, "kept": self.kept, "kept_fraction": self.kept_fraction,
                "rejected": dict(self.rejected)}


def apply_filter(
    rows: Iterable[dict], config: FilterConfig, key: str = "completion"
) -> tuple[list[dict], FilterReport]:
    """Keep the rows whose `row[key]` passes; kept rows are the same dict objects, in order."""
    kept: list[dict] = []
    report = FilterReport()
    for i, row in enumerate(rows):
        completion = row.get(key)
        if not isinstance(completion, str):
            raise SublearnError(f"row {i}: expected a string under {key!r}, "
                                f"got {type(completion).__name__}")
        report.total += 1
        reason = rejection_reason(completion, config)
        if reason is None:
            report.kept += 1
            kept.append(row)
        else:
            report.rejected[reason] += 1
    return kept, report
