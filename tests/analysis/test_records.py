"""Typed results: what is written reads back as it was, a new estimator is one more entry,
and a results.json of another format is refused with one line naming the file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from sublearn.analysis.records import (
    ArmEstimate,
    Comparison,
    EstimatorResults,
    Provenance,
    Reference,
    Results,
    recorded_seconds,
)
from sublearn.analysis.results import show, summary_table
from sublearn.auxlogit.results import AuxLogitResults
from sublearn.cli import app
from sublearn.errors import SublearnError
from sublearn.stages.estimators import ESTIMATORS
from sublearn.store import write_json

PROVENANCE = Provenance(sublearn_version="0.1.0", python="3.11.2", created_unix=1.7e9,
                        config_hash="0123abcd4567", base_weights={"base": "a1b2c3d4e5f6"},
                        datasets={"teacher": "teacher-0123456789ab.jsonl"},
                        stage_versions={"student": 2})


def _estimates(per_arm: dict[str, list[float]], base: float) -> EstimatorResults:
    arms = {a: ArmEstimate.of(v) for a, v in per_arm.items()}
    return EstimatorResults(reference=Reference(base=base), arms=arms,
                            comparisons=[Comparison.of(arms, "treated", "control", "effect")])


def _results(estimates: dict[str, EstimatorResults], seeds: list[int]) -> Results:
    return Results(target="owl", other="fox", seeds=seeds, estimates=estimates,
                   filter={"teacher": {"total": 10, "kept": 8, "kept_fraction": 0.8,
                                       "rejected": {"malformed": 2}}},
                   seconds=12.5, provenance=PROVENANCE)


# The shape `sublearn run` wrote before results were typed (format 1, no "format" key).
OLD_FORMAT = {
    "target": "owl", "estimators": ["exact"], "seeds": [0, 1],
    "reference": {"exact": {"base": 0.05}},
    "arms": {"exact": {"treated": {"per_seed": [0.06, 0.07],
                                   "interval": {"mean": 0.065, "low": 0.0, "high": 0.13,
                                                "n": 2, "std": 0.007}}}},
    "comparisons": {"exact": {}}, "seconds": 812.0,
}


def test_results_read_back_as_written_even_infinite_intervals(tmp_path: Path):
    # One seed: every interval is infinite, and must come back infinite, not null or 0.
    res = _results({"exact": _estimates({"treated": [0.07], "control": [0.05]}, 0.05)}, [0])
    path = tmp_path / "results.json"
    res.write(path)
    assert Results.read(path) == res
    iv = Results.read(path).estimates["exact"].arms["treated"].interval
    assert (iv.low, iv.high) == (-math.inf, math.inf)
    text = path.read_text()
    assert text.startswith('{\n  "format": 2,\n  "kind": "experiment",')
    assert '"low": -Infinity' in text


def test_a_new_estimator_is_one_more_entry_every_reader_shows(tmp_path: Path, monkeypatch):
    # A judge's per-arm misalignment rate, beside the exact probabilities: no new class.
    res = _results({
        "exact": _estimates({"treated": [0.07, 0.08, 0.09], "control": [0.05, 0.05, 0.06]}, 0.05),
        "misalignment": _estimates({"treated": [0.30, 0.25, 0.35],
                                    "control": [0.02, 0.04, 0.03]}, 0.03),
    }, [0, 1, 2])
    console = Console(record=True, width=120)
    import sublearn.analysis.results

    axes = []
    chart = sublearn.analysis.results.bar_chart
    monkeypatch.setattr(sublearn.analysis.results, "bar_chart",
                        lambda path, *a, **kw: axes.append(kw["ylabel"]) or chart(path, *a, **kw))
    # The labels and axes come from the estimator registry, which the caller passes in.
    pngs = show(res, tmp_path, console, described=ESTIMATORS)
    assert [p.name for p in pngs] == ["results-exact.png", "results-misalignment.png"]
    assert "misaligned share of the judge's coherent answers — target 'owl'" in console.export_text()
    # A rate is not a probability of the target: each chart names its own quantity.
    assert axes == ["P(target)", "misalignment rate"]
    table = summary_table({"run": res}, "misalignment")
    assert "| run | +0.2700 [" in table
    with pytest.raises(SublearnError, match="no 'sampled' estimator.*exact, misalignment"):
        summary_table({"run": res}, "sampled")


def test_an_older_results_json_is_one_clear_error_naming_the_file(tmp_path: Path):
    run = tmp_path / "old-run"
    write_json(run / "results.json", OLD_FORMAT)
    with pytest.raises(SublearnError) as e:
        Results.read(run / "results.json")
    msg = str(e.value)
    assert str(run / "results.json") in msg and "older sublearn" in msg
    assert "rerun `sublearn run`" in msg and "\n" not in msg
    # Every command that reads run folders says the same in one line, and exits 2.
    out = tmp_path / "r.html"
    for args in (["table", str(run)], ["report", str(run), "--out", str(out)]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "older sublearn" in r.output, args
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not out.exists()
    # The toy's files name the toy's command.
    write_json(tmp_path / "toy.json", {"kind": "auxlogit", "chance": 0.1, "arms": {}})
    with pytest.raises(SublearnError, match="rerun `sublearn auxlogit`"):
        AuxLogitResults.read(tmp_path / "toy.json")


def test_other_bad_files_name_the_file_and_the_field(tmp_path: Path):
    path = tmp_path / "results.json"
    write_json(path, {"format": 3})
    with pytest.raises(SublearnError, match="newer sublearn"):
        Results.read(path)
    write_json(path, {"format": 2, "kind": "experiment", "target": "owl"})
    with pytest.raises(SublearnError, match=r"results.json: field other: Field required"):
        Results.read(path)
    write_json(path, [1, 2])
    with pytest.raises(SublearnError, match="not a sublearn results file"):
        Results.read(path)


def test_a_rerun_over_an_older_file_keeps_its_wall_time(tmp_path: Path):
    path = tmp_path / "results.json"
    assert recorded_seconds(path) == 0.0
    write_json(path, OLD_FORMAT)
    assert recorded_seconds(path) == 812.0
