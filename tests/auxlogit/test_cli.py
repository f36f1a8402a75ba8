"""`sublearn auxlogit` end to end, with tiny populations so it runs in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sublearn.analysis.records import SweepRecord, find
from sublearn.auxlogit import experiment
from sublearn.auxlogit.config import AuxLogitConfig
from sublearn.auxlogit.results import AuxLogitResults
from sublearn.auxlogit.train import ARMS, DIFFERENT_INIT, SAME_INIT
from sublearn.cli import app
from sublearn.experiment import sweep as mechanism

runner = CliRunner()
TINY = ["--n-models", "3", "--hidden", "8,8", "--teacher-epochs", "1", "--student-epochs", "1",
        "--batch-size", "128", "--noise-size", "256"]
PNG = b"\x89PNG\r\n\x1a\n"


def test_help_teaches_the_experiment_and_the_knobs() -> None:
    result = runner.invoke(app, ["auxlogit", "--help"])
    assert result.exit_code == 0
    for text in ("auxiliary", "initialisation", "--sweep", "--m", "--noise-size", "--distill",
                 "--preset", "strong", "default: 100", "--defence", "--strengths", "round",
                 "temperature", "top1", "--workers", "--precision"):
        assert text in result.output, text


def test_single_run_writes_results_manifest_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["auxlogit", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "same_init_student" in result.output and "95% interval" in result.output
    results = AuxLogitResults.read(out / "results.json")
    assert list(results.arms) == list(ARMS)
    for arm in results.arms.values():
        assert len(arm.values) == 3
        assert arm.interval.low <= arm.interval.mean <= arm.interval.high
    effect = find(results.comparisons, SAME_INIT, DIFFERENT_INIT)
    assert results.chance == 0.1 and effect is not None and effect.paired.diff.n == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "auxlogit"
    assert manifest["config"]["n_models"] == 3 and manifest["config"]["hidden"] == [8, 8]
    assert manifest["data"]["name"] == "digits"
    assert (out / "accuracy.png").read_bytes().startswith(PNG)


def test_sweep_writes_a_run_per_value_a_table_and_a_plot(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["auxlogit", *TINY, "--sweep", "m=2,4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "m = 2" in result.output and "m = 4" in result.output
    for m in (2, 4):
        point = out / f"auxlogit-m-{m}"
        results = AuxLogitResults.read(point / "results.json")
        assert (results.config.m, results.config.n_models) == (m, 3)
        assert (point / "accuracy.png").read_bytes().startswith(PNG)
    table = (out / "sweep.md").read_text()
    assert "| auxlogit-m-2 | 2 |" in table and "| auxlogit-m-4 | 4 |" in table
    record = SweepRecord[AuxLogitResults].read(out / "sweep.json")
    assert record.kind == "auxlogit" and record.grid == {"m": [2, 4]}
    assert [p.results.config.m for p in record.points] == [2, 4]
    assert (out / "sweep.png").read_bytes().startswith(PNG)  # accuracy against m


def test_an_interrupted_toy_sweep_resumes_without_redoing_finished_points(
        tmp_path: Path, monkeypatch) -> None:
    cfg = AuxLogitConfig.build(n_models=3, hidden=(8, 8), teacher_epochs=1, student_epochs=1,
                               batch_size=128, noise_size=256)
    out = tmp_path / "sweep"
    real, calls = mechanism.run_task, []

    def interrupted_in_the_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does while the second point trains
        return real(*args)

    monkeypatch.setattr(mechanism, "run_task", interrupted_in_the_second)
    with pytest.raises(KeyboardInterrupt):
        experiment.sweep(cfg, "loss", ["kl", "mse"], out=out, show=False)
    first = out / "auxlogit-loss-kl" / "results.json"
    written = first.stat().st_mtime_ns
    assert not (out / "auxlogit-loss-mse" / "results.json").exists()

    calls.clear()
    outcome = experiment.sweep(cfg, "loss", ["kl", "mse"], out=out, show=False)
    assert (outcome.tasks, outcome.skipped, len(calls)) == (2, 1, 1)
    assert first.stat().st_mtime_ns == written  # the finished point was not trained again
    record = SweepRecord[AuxLogitResults].read(out / "sweep.json")
    assert [p.values for p in record.points] == [{"loss": "kl"}, {"loss": "mse"}]
    assert [p.results.config.loss for p in record.points] == ["kl", "mse"]
    # A knob that is not a number: the plot is the effect per point, not a line.
    assert (out / "sweep.png").read_bytes().startswith(PNG)
    assert (out / "sweep.md").read_text().count("| auxlogit-loss-") == 2


def test_defence_run_prints_a_table_and_writes_a_plot(tmp_path: Path) -> None:
    out = tmp_path / "defend"
    result = runner.invoke(app, ["auxlogit", *TINY, "--defence", "noise=1,4", "--defence",
                                 "round=2", "--workers", "2", "--out", str(out)],
                           env={"COLUMNS": "200"})  # the table's full width, unwrapped
    assert result.exit_code == 0, result.output
    assert "noise: noise std" in result.output and "round: bits" in result.output
    assert "same-init" in result.output and "different-init" in result.output
    results = json.loads((out / "results.json").read_text())
    assert [(p["defence"], p["value"]) for p in results["points"]] == [
        ("none", None), ("noise", 1.0), ("noise", 4.0), ("round", 2.0)]
    for p in results["points"]:
        assert len(p["same_init"]["accuracy"]) == 3 and len(p["different_init"]["accuracy"]) == 3
    assert (out / "defence.png").read_bytes().startswith(PNG)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["defences"] == [["noise", [1.0, 4.0]], ["round", [2.0]]]
    assert manifest["workers"] == 2


def test_m1_with_kl_is_refused_with_the_reason(tmp_path: Path) -> None:
    for args in (["--m", "1"], ["--sweep", "m=1,3"]):
        result = runner.invoke(app, ["auxlogit", *TINY, *args, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2
        assert "no gradient" in result.output
    assert not (tmp_path / "x").exists()  # refused before any training


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-mnist.npz"
    cases = [
        (["--mnist-path", str(missing)], "no-such-mnist.npz"),
        (["--loss", "l1"], "loss"),
        (["--sweep", "colour=red"], "unknown knob 'colour'"),
        (["--sweep", "m"], "KNOB=V1,V2"),
        (["--preset", "huge"], "unknown preset"),
        (["--hidden", "wide"], "hidden"),
        (["--defence", "blur"], "unknown defence"),
        (["--defence", "round=0"], "whole number"),
        (["--defence", "noise", "--sweep", "m=2,3"], "drop --sweep"),
        (["--defence", "noise", "--loss", "mse"], "--loss kl"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["auxlogit", *TINY, *args, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output, args
