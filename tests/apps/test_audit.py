"""`sublearn audit --method both`: the two methods' rankings side by side, and a verdict line
that says where they agree."""

from __future__ import annotations

from sublearn.apps.audit import combine


def _summary(order: list[str], flagged: list[str]) -> dict:
    return {"candidates": [{"option": o, "p_adjusted": 0.01 if o in flagged else 0.9}
                           for o in order], "flagged": flagged}


def test_the_verdict_says_where_the_methods_agree_and_where_not() -> None:
    agree = combine({"persona": _summary(["owl", "fox", "cat"], ["owl"]),
                     "students": _summary(["owl", "cat", "fox"], ["owl", "cat"])})
    assert agree["verdict"] == ("both methods rank owl first; flagged by both: owl; "
                                "by students only: cat.")
    assert [c["option"] for c in agree["candidates"]] == ["owl", "cat", "fox"]  # summed rank
    assert agree["candidates"][1] == {"option": "cat", "persona_rank": 3, "students_rank": 2,
                                      "persona_p_adjusted": 0.9, "students_p_adjusted": 0.01}
    disagree = combine({"persona": _summary(["fox", "owl"], []),
                        "students": _summary(["owl", "fox"], [])})
    assert disagree["verdict"] == ("the methods disagree on the first candidate: persona ranks "
                                   "fox first, students ranks owl first; flagged by both: none.")
