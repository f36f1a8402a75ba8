from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sublearn.cli import app

runner = CliRunner()


def test_help_lists_the_pipeline_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("run", "demo", "base", "auxlogit"):
        assert cmd in res.output


def test_missing_model_path_is_one_line_and_exit_2(tmp_path: Path):
    res = runner.invoke(app, ["base", "info", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "does not exist" in res.output and "Traceback" not in res.output


def test_folder_that_is_not_a_model(tmp_path: Path):
    res = runner.invoke(app, ["base", "info", str(tmp_path)])
    assert res.exit_code == 2 and "not a model folder" in res.output


def test_bad_config_names_the_field(tmp_path: Path):
    p = tmp_path / "x.toml"
    p.write_text('[trait]\ncategory = "planet"\n')
    res = runner.invoke(app, ["run", str(p)])
    assert res.exit_code == 2
    assert "unknown category 'planet'" in res.output and "Traceback" not in res.output


def test_base_info_measures_a_model(micro_base: Path, tmp_path: Path):
    out = tmp_path / "m.json"
    res = runner.invoke(app, ["base", "info", str(micro_base), "--json", str(out),
                               "--questions", "1", "--numbers", "8"])
    assert res.exit_code == 0, res.output
    assert "strict filter" in res.output and out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--answer", "word"], "--answer 'word': choose one of bare, stem"),
    (["--targets", "owl,unicorn"], "unknown animal 'unicorn'"),
])
def test_entangle_refuses_bad_arguments_before_loading(tmp_path: Path, args, message):
    res = runner.invoke(app, ["entangle", str(tmp_path / "no-model"), *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
