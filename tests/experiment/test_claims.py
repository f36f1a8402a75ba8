"""`sublearn claims`: claim files validated at load, conditions run as one sweep over a shared
store on the fake backend, verdicts from the statistic's intervals, and a rerun that only
re-renders the table."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sublearn.analysis.stats import mean_ci
from sublearn.apps.claims import DEFAULT_FOLDER
from sublearn.cli import app
from sublearn.errors import SublearnError
from sublearn.experiment import claims
from sublearn.experiment.claims import Condition, Measured
from tests.conftest import SMALL, fake_experiment

CLAIM = """
[claim]
title = "A smaller learning rate transmits less"
source = "a test"
published = "nothing"
published_model = "none"
estimator = "exact"
[[claim.conditions]]
name = "ref"
[[claim.conditions]]
name = "slow"
set = {"student.lr" = 1e-5}
expect = "below"
"""


def _organism(root: Path) -> Path:
    """A fake-backend experiment that runs in seconds (2 seeds, treated and control)."""
    return fake_experiment(root, file="_organism.toml", **SMALL)


def _claim(folder: Path, name: str, body: str) -> Path:
    _organism(folder)
    path = folder / f"{name}.toml"
    path.write_text('extends = "_organism.toml"\n' + body)
    return path


def test_every_shipped_claim_loads_with_its_conditions_validated():
    specs = claims.select(DEFAULT_FOLDER)
    assert len(specs) >= 9
    for s in specs:
        assert s.claim.untestable or len(s.configs) == len(s.claim.conditions) >= 2, s.name
        # Each condition's run folder is its own; the claims share one store.
        assert len({c.name for c in s.configs.values()}) == len(s.configs)


@pytest.mark.parametrize("body, message", [
    (CLAIM.replace('"student.lr" = 1e-5', '"student.nope" = 1'),
     "claim.conditions[1] (slow): field student.nope"),
    (CLAIM.replace('expect = "below"', 'expect = "below"\nthan = "other"'),
     "than 'other' is not a condition"),
    (CLAIM + 'statistic = "treated - other_target"\n',
     "no arm 'other_target' in this experiment"),
    (CLAIM.replace("[claim]", '[claim]\nstatistic = "treated minus control"'),
     "expected 'a - b'"),
    (CLAIM.replace("[claim]", '[claim]\nuntestable = "no model"'),
     "field claim: conditions: an untestable claim has none"),
    (CLAIM.replace('"exact"', '"exact_heldout"'), "exact_heldout: evaluation.heldout is off"),
    (CLAIM.replace('"student.lr" = 1e-5', '"student.lr" = 1e-5, "seeds" = [0, 2]'),
     "conditions must share seeds"),
])
def test_a_bad_claim_fails_at_load_naming_file_and_field(tmp_path: Path, body: str,
                                                         message: str):
    path = _claim(tmp_path, "bad", body)
    with pytest.raises(SublearnError) as e:
        claims.load_claim(path)
    assert str(path) in str(e.value)
    assert message in str(e.value)


def _measured(name: str, expect: str, values: list[float], met: bool) -> Measured:
    return Measured(Condition(name=name, expect=expect), "treated - control", values,
                    mean_ci(values), None, None, met, 0.0)


def test_verdicts_follow_the_conditions_and_refuse_a_reference_without_transfer(tmp_path):
    spec = claims.load_claim(_claim(tmp_path, "c", CLAIM))
    ref_ok = _measured("ref", "transfer", [0.02, 0.03, 0.025], True)
    below = _measured("slow", "below", [0.0] * 3, True)
    assert claims.verdict(spec, [ref_ok, below])[0] == "holds"
    # Judged on the conditions after the reference: the reference is a precondition.
    assert claims.verdict(spec, [ref_ok, _measured("slow", "below", [0.03] * 3, False)]) \
        == ("does not hold", "not as predicted: slow")
    also = _measured("other", "none", [0.01] * 3, False)
    assert claims.verdict(spec, [ref_ok, below, also]) \
        == ("partly holds", "not as predicted: other")
    no_ref = _measured("ref", "transfer", [-0.01, 0.01, 0.0], False)
    verdict, why = claims.verdict(spec, [no_ref, below])
    assert verdict == "not testable here" and "shows no transfer" in why


def test_a_claim_of_predictions_is_judged_on_every_condition(tmp_path):
    body = CLAIM.replace("[claim]", "[claim]\nrequires_transfer = false")
    spec = claims.load_claim(_claim(tmp_path, "c", body))
    no_ref = _measured("ref", "transfer", [-0.01, 0.01, 0.0], False)
    below = _measured("slow", "below", [0.0] * 3, True)
    assert claims.verdict(spec, [no_ref, below]) == ("partly holds", "not as predicted: ref")
    with pytest.raises(SublearnError, match="the first condition is the reference"):
        claims.load_claim(_claim(tmp_path, "d", CLAIM.replace(
            '[[claim.conditions]]\nname = "ref"', '[[claim.conditions]]\nname = "ref"\n'
            'expect = "none"')))


def _students(root: Path) -> dict[Path, int]:
    """The finished student folders of the store (hidden names are locks) -> their mtime."""
    return {p: p.stat().st_mtime_ns for p in (root / "store" / "students").iterdir()
            if not p.name.startswith(".")}


def test_conditions_share_one_store_and_a_rerun_only_rerenders(tmp_path: Path):
    folder = tmp_path / "claims"
    _claim(folder, "lr", CLAIM)
    root, out = tmp_path / "runs", tmp_path / "claims.md"
    result = CliRunner().invoke(app, ["claims", "--folder", str(folder), "--root", str(root),
                                      "--out", str(out), "--sequential", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "lr: " in result.output
    doc = out.read_text()
    assert "| A smaller learning rate transmits less | a test |" in doc
    assert "`sublearn claims lr`" in doc
    # Teachers and datasets were made once, in the store, not in either condition's folder.
    assert len(list((root / "store" / "data").glob("teacher-*.kept-*.jsonl"))) == 1
    assert not (root / "lr-ref" / "data").exists() and (root / "lr-ref" / "results.json").exists()
    students = _students(root)
    assert len(students) == 2 * 2 * 2  # 2 conditions x (treated, control) x 2 seeds

    again = CliRunner().invoke(app, ["claims", "lr", "--folder", str(folder), "--root",
                                     str(root), "--out", str(out), "--sequential"])
    assert again.exit_code == 0, again.output
    assert "8 already finished (skipped); running 0" in again.output.replace("\n", " ")
    assert _students(root) == students
    assert out.read_text().split("## The table")[1] == doc.split("## The table")[1]


def test_list_shows_conditions_and_untestable_claims():
    result = CliRunner().invoke(app, ["claims", "--list"])
    assert result.exit_code == 0, result.output
    assert "paraphrase: " in result.output and "untestable: " in result.output
    assert "r8 (transfer), r32 (above), r128 (below), full (none)" in result.output
