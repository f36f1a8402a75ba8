"""`sublearn sweep` on the weightless fake backend: the grid, validation before any work, a
2 x 2 grid on a local Ray instance, and an interrupted sweep that resumes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sublearn.analysis.records import Results, SweepRecord
from sublearn.cli import app
from sublearn.errors import SublearnError
from sublearn.experiment import protocol_sweep, sweep
from tests.conftest import SMALL, fake_experiment

GRID_2X2 = ["trait.target=owl,cat", "student.labels=hard,soft"]


def _config_file(root: Path, sweep_table: str = "") -> Path:
    """A fake-backend experiment that runs in seconds: treated and control arms, 2 seeds."""
    return fake_experiment(root, "tiny", file="tiny.toml", **SMALL, extra=sweep_table)


def _data_rows(table: str) -> list[str]:
    return table.splitlines()[2:]  # after the header and its rule


def test_grid_values_are_read_as_toml_like_set():
    grid = sweep.parse_grid(["trait.target=owl,cat", "filter.banned_numbers=[7,13],[]",
                             "student.lr=1e-3, 2e-3", "data.sampling.top_p=0.9",
                             'evaluation.questions_file="a,b.txt",c.txt'])
    assert grid == {"trait.target": ["owl", "cat"], "filter.banned_numbers": [[7, 13], []],
                    "student.lr": [1e-3, 2e-3], "data.sampling.top_p": [0.9],
                    "evaluation.questions_file": ["a,b.txt", "c.txt"]}
    for bad in ("trait.target", "=owl", "trait.target=owl,,cat"):
        with pytest.raises(SublearnError, match="expected key.path=v1,v2"):
            sweep.parse_grid([bad])


def test_points_have_readable_names_and_the_command_line_extends_the_file(tmp_path: Path):
    cfg = _config_file(tmp_path, '[sweep]\ngrid = {"trait.target" = ["owl", "cat"], '
                                 '"student.lr" = [0.001]}\naddress = "auto"')
    p = protocol_sweep.plan(cfg, ["student.lr=2e-3,0.003", "student.labels=hard"])
    assert p.address == "auto" and p.name == "tiny-sweep-target-lr-labels"
    assert [pt.name for pt in p.points] == [
        "tiny-target-owl-lr-0.002-labels-hard", "tiny-target-owl-lr-0.003-labels-hard",
        "tiny-target-cat-lr-0.002-labels-hard", "tiny-target-cat-lr-0.003-labels-hard"]
    last = p.points[-1].config
    assert (last.name, last.trait.target, last.student.lr) == (p.points[-1].name, "cat", 0.003)
    # 4 points x 2 arms (treated, control) x 2 seeds
    assert len(sweep.tasks(p)) == 16
    # Two keys ending alike are named in full, so their points stay apart.
    names = [pt.name for pt in protocol_sweep.plan(cfg, ["student.seed=1", "base.embedded.seed=2"],
                                          ).points]
    assert names == ["tiny-target-owl-lr-0.001-student.seed-1-base.embedded.seed-2",
                     "tiny-target-cat-lr-0.001-student.seed-1-base.embedded.seed-2"]


def test_a_bad_grid_entry_fails_before_any_work(tmp_path: Path):
    cfg = _config_file(tmp_path)
    runs = tmp_path / "runs"
    cases = {"student.lrr=1,2": r"grid student.lrr=1: field student.lrr: Extra inputs",
             "student.labels=hard,sof": r"grid student.labels='sof': field student.labels",
             "name=a,b": "cannot be swept", "trait.target=owl,owl": "distinct values"}
    for entry, message in cases.items():
        t0 = time.time()
        with pytest.raises(SublearnError, match=message):
            protocol_sweep.run_sweep(cfg, ["trait.target=owl,cat", entry], runs, sequential=True,
                            quiet=True)
        assert time.time() - t0 < 5  # validation only: no sampling, no training
    assert not runs.exists()
    # The command line turns it into one line and exit code 2.
    r = CliRunner().invoke(app, ["sweep", str(cfg), "--grid", "student.lrr=1",
                                 "--root", str(runs)])
    assert r.exit_code == 2 and "grid student.lrr=1" in r.output


def _students(root: Path) -> dict[str, int]:
    """Every file of every student folder -> its modification time in ns."""
    return {str(f.relative_to(root)): f.stat().st_mtime_ns
            for f in root.glob("*/students/*/**/*") if f.is_file()}


def test_an_interrupted_sweep_resumes_without_redoing_finished_tasks(tmp_path: Path,
                                                                     monkeypatch):
    cfg = _config_file(tmp_path)
    runs = tmp_path / "runs"
    grid = ["trait.target=owl,cat"]  # 2 points x 2 arms x 2 seeds = 8 tasks
    real, calls = sweep.run_task, []

    def interrupted_after_three(*args):
        calls.append(args)
        if len(calls) > 3:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of the fourth task
        return real(*args)

    monkeypatch.setattr(sweep, "run_task", interrupted_after_three)
    with pytest.raises(KeyboardInterrupt):
        protocol_sweep.run_sweep(cfg, grid, runs, sequential=True, quiet=True)
    before = _students(runs)
    assert len({Path(f).parts[:3] for f in before}) == 3  # three students on disk
    monkeypatch.setattr(sweep, "run_task", real)

    out = protocol_sweep.run_sweep(cfg, grid, runs, sequential=True, quiet=True)
    after = _students(runs)
    assert (out.tasks, out.skipped) == (8, 3)
    assert {f: after[f] for f in before} == before  # finished students were not rewritten
    assert len({Path(f).parts[:3] for f in after}) == 8
    assert len(_data_rows(out.table)) == 2


@pytest.fixture(scope="module")
def local_ray():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'sublearn[ray]')")
    # Started once for the module (Ray takes seconds to start); run_sweep finds it running,
    # uses it, and leaves it for this fixture to stop.
    with sweep.ray_session(address=None, workers=2):
        yield


def test_a_2x2_sweep_runs_on_local_ray(tmp_path: Path, local_ray):
    cfg = _config_file(tmp_path)
    out = protocol_sweep.run_sweep(cfg, GRID_2X2, tmp_path / "runs", quiet=True)
    assert (out.tasks, out.skipped) == (16, 0)
    rows = _data_rows(out.table)
    assert len(rows) == 4 and rows[0].startswith("| tiny-target-owl-labels-hard |")
    assert (out.dir / "sweep.md").read_text().count("| tiny-target-") == 4
    record = SweepRecord[Results].read(out.dir / "sweep.json")
    assert record.points[-1].values == {"trait.target": "cat", "student.labels": "soft"}
    assert [p.results.target for p in record.points] == ["owl", "owl", "cat", "cat"]
    assert all(p.results.estimates["exact"].comparison("treated", "control")
               for p in record.points)
    assert out.plot is not None and out.plot.stat().st_size > 0
