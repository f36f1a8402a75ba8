"""A defence is one declared entry: registering one (its entry and its function, nothing
else) is enough for the config, the pipeline, `sublearn defend` and README's table."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sublearn.cli import app
from sublearn.errors import SublearnError
from sublearn.experiment.config import load_config
from sublearn.experiment.pipeline import Experiment
from sublearn.safety.defences import (
    DEFENCES,
    Defence,
    DefenceConfig,
    Inputs,
    Strength,
    default_defences,
    defence_table,
    register,
)
from tests.conftest import fake_experiment

README = Path(__file__).resolve().parents[2] / "README.md"


def drop_longest(rows: Sequence[dict[str, Any]], cfg: DefenceConfig, seed: int,
                 inputs: Inputs) -> list[dict[str, Any]]:
    """Drop the strength fraction of rows with the longest completions (ties: later rows)."""
    k = round(cfg.strength * len(rows))
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]["completion"]), -i))
    gone = set(order[:k])
    return [r for i, r in enumerate(rows) if i not in gone]


@pytest.fixture
def registered() -> Iterator[Defence]:
    entry = register(Defence(
        "drop_longest", "longest rows dropped",
        "drop the strength fraction of rows with the longest completions", drop_longest,
        Strength("fraction of rows dropped", 0.25), needs_neutral=True))
    yield entry
    del DEFENCES[entry.name]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return fake_experiment(tmp_path_factory.mktemp("registry"))


def test_a_registered_defence_runs_end_to_end(registered: Defence, config: Path,
                                              tmp_path: Path):
    assert default_defences()[-1] == "drop_longest:0.25"
    assert DefenceConfig(name="drop_longest", strength=0.5).label == "drop_longest 0.5"
    res = CliRunner().invoke(app, ["defend", str(config), "--root", str(tmp_path), "--quiet",
                                   "--audit-only", "--defence", "drop_longest:0.25"])
    assert res.exit_code == 0, res.output
    rows = {r["defence"]: r for r in json.loads(
        (tmp_path / "fake" / "defend.json").read_text())["rows"]}
    assert list(rows) == ["none", "drop_longest 0.25"]
    kept = rows["drop_longest 0.25"]
    assert kept["rows_kept"] == kept["rows_before"] - round(0.25 * kept["rows_before"]) > 0
    assert rows["none"]["rows_kept"] == kept["rows_before"]


def test_what_an_entry_declares_is_what_config_and_pipeline_ask(registered: Defence,
                                                                config: Path, tmp_path: Path):
    # It takes the neutral teacher's rows: the experiment samples them even without the
    # neutral control, and soft labels (one writer per dataset) are refused.
    setting = "defence={name = 'drop_longest', strength = 0.25}"
    cfg = load_config(config, ["controls.neutral=false", setting])
    assert "neutral" in Experiment(cfg, tmp_path, progress=False).datasets_needed()
    assert "neutral" not in Experiment(load_config(config, ["controls.neutral=false"]),
                                       tmp_path, progress=False).datasets_needed()
    with pytest.raises(SublearnError, match="drop_longest mixes two writers' rows"):
        load_config(config, [setting, "student.labels=soft"])


def test_readme_lists_exactly_the_registered_defences():
    text = README.read_text()
    start = text.index("<!-- defence_table() -->\n") + len("<!-- defence_table() -->\n")
    table = text[start:text.index("<!-- /defence_table() -->")]
    assert table == defence_table(), "regenerate README's table with defence_table()"
    assert re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE) == list(DEFENCES)
