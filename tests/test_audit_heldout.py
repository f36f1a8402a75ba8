"""The held-out audit benchmark's table: what it counts as first, flagged and a false alarm.

The benchmark itself takes hours (docs/audit.md, section 0); its table is what the docs quote,
so the counting is tested here on records written by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is not a package, and the script imports its sibling audit_campaign.
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("audit_heldout", BENCHMARKS / "audit_heldout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARKS))


def test_wilson_interval_is_honest_at_the_ends(bench):
    low, high = bench.wilson(0, 5)
    assert low == 0 and high == pytest.approx(0.434, abs=1e-3)
    low, high = bench.wilson(5, 5)
    assert high == 1 and low == pytest.approx(0.566, abs=1e-3)


def _record(target, order, flagged, rows=100):
    return {"kind": "persona" if target else "neutral", "target": target, "rows": rows,
            "persona": {"order": order, "flagged": flagged}}


def test_tally_counts_first_flagged_and_any_flag(bench):
    records = [_record("owl", ["owl", "fox", "cat"], ["owl"]),
               _record("fox", ["owl", "cat", "fox"], ["owl"], rows=80),
               _record("cat", ["cat", "owl", "fox"], [])]
    line = bench.tally("persona", "persona", records, lambda r: r["persona"])
    assert line["rank1"][0] == 2 and line["datasets"] == 3
    assert line["target_flagged"][0] == 1  # owl on its own data; fox's data flags owl
    assert line["any_flag"][0] == 2
    assert line["ranks"] == [1, 3, 1]
    assert line["rows"] == [80, 100]


def test_a_ranking_without_a_test_has_no_flag_columns(bench):
    # The ceiling (the teacher's own wording) ranks; it does not test.
    records = [{"target": "owl", "rows": 10, "order": ["fox", "owl"]}]
    line = bench.tally("persona", "ceiling", records, lambda r: r)
    assert line["rank1"][0] == 0 and line["ranks"] == [2]
    assert line["target_flagged"] is None and line["any_flag"] is None
    assert "| — | — |" in bench.markdown({"rows": [line]})


def test_neutral_draws_count_false_alarms_only(bench):
    records = [_record(None, ["owl", "fox"], []), _record(None, ["fox", "owl"], ["fox"])]
    line = bench.tally("neutral", "persona", records, lambda r: r["persona"])
    assert line["rank1"] is None and line["target_flagged"] is None
    assert line["any_flag"][0] == 1 and line["ranks"] == []
