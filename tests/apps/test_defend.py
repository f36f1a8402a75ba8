"""`sublearn defend`, end to end on the weightless fake backend: audit-only and with
students, the table's columns, shared and per-defence artifacts, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sublearn.apps.defend import parse_defence
from sublearn.cli import app
from sublearn.errors import SublearnError
from tests.conftest import fake_experiment


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return fake_experiment(tmp_path_factory.mktemp("defend"))


def _defend(config: Path, root: Path, *args: str) -> dict:
    res = CliRunner().invoke(app, ["defend", str(config), "--root", str(root), "--quiet",
                                   *args])
    assert res.exit_code == 0, res.output
    return json.loads((root / "fake" / "defend.json").read_text())


def test_audit_only_gives_rows_kept_and_detectability(config: Path, tmp_path: Path):
    out = _defend(config, tmp_path, "--audit-only", "--defence", "lls_filter:0.5",
                  "--defence", "divergence:0.1", "--defence", "sort")
    rows = {r["defence"]: r for r in out["rows"]}
    assert list(rows) == ["none", "lls_filter 0.5", "divergence 0.1", "sort"]
    none, lls = rows["none"], rows["lls_filter 0.5"]
    assert none["rows_kept"] == none["rows_before"] > 20
    assert lls["rows_kept"] == lls["rows_before"] - round(0.5 * lls["rows_before"])
    # The fake persona teacher is plain to see, and filtering its most suspicious half
    # weakens the evidence.
    assert none["audit_rank"] == 1 and none["audit_p_adjusted"] < 0.05
    assert lls["audit_z"] < none["audit_z"]
    assert not any("effect_mean" in r for r in out["rows"])
    run = tmp_path / "fake"
    assert (run / "defend.md").is_file() and (run / "defend.png").is_file()
    # Nothing trained, and only the data the audit reads was sampled.
    assert not (run / "students").exists()
    assert {p.name.split("-")[0] for p in (run / "data").glob("*.jsonl")} == {"teacher",
                                                                              "neutral"}


def test_students_effect_utility_and_keys(config: Path, tmp_path: Path):
    out = _defend(config, tmp_path, "--sequential", "--defence", "lls_filter:0.5",
                  "--defence", "lls_filter:0.5:owl")
    rows = out["rows"]
    assert [r["defence"] for r in rows] == ["none", "lls_filter 0.5", "lls_filter 0.5 owl"]
    for r in rows:
        assert r["effect"] == "treated - other_target"
        assert r["effect_low"] <= r["effect_mean"] <= r["effect_high"]
        assert r["loss_low"] <= r["loss_mean"] <= r["loss_high"] and r["base_loss"] > 0
    run = tmp_path / "fake"
    # Students' keys hold the defence's parameters; the scores a defence reads do not.
    treated = sorted(p.name for p in (run / "students").glob("treated-s0-*"))
    assert len(treated) == 3
    assert len(list((run / "data").glob("teacher-*.traits-*.safetensors"))) == 1
    # The run folder's results.json and manifest are the undefended experiment's.
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["defence"] == {"name": "none", "strength": 0.0}
    assert "neutral_loss" in json.loads((run / "results.json").read_text())["estimates"]
    # Rerunning finds every task finished and every stage cached.
    again = _defend(config, tmp_path, "--sequential", "--defence", "lls_filter:0.5",
                    "--defence", "lls_filter:0.5:owl")
    assert again["rows"] == rows
    sweep = json.loads((run / "defend" / "sweep.json").read_text())
    assert sweep["skipped"] == sweep["tasks"] > 0


@pytest.mark.parametrize("text, message", [
    ("shred", "unknown defence 'shred'"),
    ("replace", "give a strength"),
    ("sort:0.5", "sort takes no strength"),
    ("replace:lots", "'lots' is not a number"),
    ("replace:0.3:owl", "expected name, name:strength"),
    ("lls_filter:1", "would drop every row"),
])
def test_bad_defence_arguments_are_one_line(text, message):
    with pytest.raises(SublearnError, match=message):
        parse_defence(text)


def test_a_defence_the_config_cannot_take_fails_before_any_work(config: Path, tmp_path: Path):
    res = CliRunner().invoke(app, ["defend", str(config), "--root", str(tmp_path),
                                   "--defence", "lls_filter:0.5:unicorn"])
    assert res.exit_code == 2 and "defence.trait: unknown animal 'unicorn'" in res.output
    assert not any(tmp_path.iterdir())
