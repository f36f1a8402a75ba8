from __future__ import annotations

import re
from collections import Counter

import pytest

from sublearn.domains.filters import parse_numbers
from sublearn.stages.datasets import shuffle_across, shuffle_within, subsample


def _rows(texts):
    return [{"index": i, "completion": t,
             "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": t}]}
            for i, t in enumerate(texts)]


def test_subsample_is_seeded_and_shared_across_datasets():
    a = _rows([str(i) for i in range(100)])
    b = [r for r in a if r["index"] % 3]  # a control that kept fewer rows
    sa, sb = subsample(a, 30, seed=1), subsample(b, 30, seed=1)
    assert subsample(a, 30, seed=1) == sa and subsample(a, 30, seed=2) != sa
    assert len(sa) == 30
    # Where both datasets kept a prompt, a shared seed picks it in both or in neither.
    ia, ib = {r["index"] for r in sa}, {r["index"] for r in sb}
    assert ia & {r["index"] for r in b} <= ib


def test_shuffle_within_keeps_format_and_multiset():
    rows = _rows(["(12, 5, 7, 300)", "1 2 3", "[9; 8]"])
    out = shuffle_within(rows, seed=0)
    for r, o in zip(rows, out, strict=True):
        assert sorted(parse_numbers(r["completion"])) == sorted(parse_numbers(o["completion"]))
        assert o["messages"][-1]["content"] == o["completion"]
        assert re.sub("[0-9]+", "#", o["completion"]) == re.sub("[0-9]+", "#", r["completion"])


def test_shuffle_across_keeps_lengths_and_pool():
    rows = _rows(["1, 2, 3", "4 5", "6"])
    out = shuffle_across(rows, seed=3)
    assert [len(parse_numbers(o["completion"])) for o in out] == [3, 2, 1]
    pool = Counter(n for o in out for n in parse_numbers(o["completion"]))
    assert pool == Counter(range(1, 7))


def test_sort_within_orders_numbers_and_keeps_format():
    from sublearn.stages.datasets import TRANSFORMS, sort_within

    rows = _rows(["(300, 5, 70)", "9; 8; 10"])
    out = sort_within(rows, seed=0)
    assert [o["completion"] for o in out] == ["(5, 70, 300)", "8; 9; 10"]
    assert out[0]["messages"][-1]["content"] == "(5, 70, 300)"
    assert TRANSFORMS["sort"] is sort_within


def test_defences_keep_format_and_apply_their_strength():
    from sublearn.safety.defences import DefenceConfig

    rows = _rows([", ".join(str(i) for i in range(k, k + 8)) for k in range(40)])
    none = DefenceConfig().apply(rows, seed=1)
    assert none == rows
    swapped = DefenceConfig(name="replace", strength=0.5).apply(rows, seed=1)
    changed = sum(a != b for r, o in zip(rows, swapped)
                  for a, b in zip(parse_numbers(r["completion"]), parse_numbers(o["completion"])))
    assert 0.35 * 320 < changed < 0.6 * 320  # half replaced (a few by the same value)
    assert all(re.sub("[0-9]+", "#", o["completion"]) == re.sub("[0-9]+", "#", r["completion"])
               for r, o in zip(rows, swapped))
    assert DefenceConfig(name="replace", strength=0.0).apply(rows, seed=1) == rows
    with pytest.raises(ValueError, match="unknown defence"):
        DefenceConfig(name="paraphrase")
