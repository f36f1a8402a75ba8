"""`sublearn demo` end to end at toy sizes: the three steps, the summary, the page that opens
with the three findings, and a second run that reads every step back; the findings' words
made from the run's numbers, and the demo's terminal tables in 80 columns."""

from __future__ import annotations

import html
import time
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from sublearn.analysis import stats
from sublearn.analysis.records import Crossover, Results
from sublearn.analysis.results import crossover_chart, show
from sublearn.apps.demo import DemoPlan, DemoSummary, numbers_finding, ordinal, run_demo
from sublearn.apps.html_report import Finding
from sublearn.auxlogit.config import AuxLogitConfig
from sublearn.auxlogit.experiment import print_point, summarise
from sublearn.auxlogit.results import AuxLogitResults
from sublearn.auxlogit.train import ARMS, SAME_INIT
from sublearn.store import read_json
from tests.apps.test_html_report import EST, fake_results
from tests.conftest import MICRO

TINY = DemoPlan(
    overrides=(*(f"base.embedded.{k}={v}" for k, v in MICRO.items()),
               "data.prompts=24", "data.subsample=24", "seeds=[0, 1]", "student.epochs=1",
               "teacher.finetune.epochs=1", "name=demo-test",
               # The micro model writes few clean lists; the filter has its own tests.
               "filter.strict_numbers=false"),
    toy_options=(("n_models", 3), ("hidden", (8, 8)), ("teacher_epochs", 1),
                 ("student_epochs", 1), ("noise_size", 256)),
    audit_rows=8,
)
HEADINGS = ("1 · The toy", "2 · Numbers", "3 · The audit")


def test_demo_runs_every_step_and_reads_them_back(tmp_path, capsys, micro_base) -> None:
    report = run_demo(tmp_path, quiet=True, plan=TINY)
    out = capsys.readouterr().out
    for step in ("toy", "numbers", "audit"):
        assert step in out
    page = report.read_text()
    assert "<html" in page and "demo-test" in page
    assert (tmp_path / "demo-test" / "audit.json").exists()  # the report's audit table
    audits = list((tmp_path / "demo" / "audit").glob("*/audit.json"))
    assert len(audits) == 1

    # The page opens with the three findings, in the order of the steps, each with its
    # figure, before any table of the number run.
    sections = page.split('<section class="finding">')[1:]
    assert len(sections) == 3
    for heading, section in zip(HEADINGS, sections, strict=True):
        assert section.index(f"<h2>{heading}") < section.index('<img src="data:image/png')
    assert page.index(f"<h2>{HEADINGS[-1]}") < page.index("<table")
    # The words are the run's own numbers.
    toy = AuxLogitResults.read(tmp_path / "demo" / "toy" / "results.json")
    assert f"({toy.arms[SAME_INIT].interval.mean:.2f} test accuracy)" in sections[0]
    audit = read_json(audits[0])
    rank = [c["option"] for c in audit["candidates"]].index("owl") + 1
    named = rank == 1 and "owl" in audit["flagged"]
    assert ("The audit names owl" if named else
            f"it ranks owl {ordinal(rank)} of {len(audit['candidates'])}") in sections[2]
    # The demo's teacher is a fine-tune, which the default method need not see: it says so.
    assert "This teacher is a fine-tune, not a persona" in sections[2]
    # The audit is a table of candidates, without the file paths in audit.json.
    assert "<h3>Audit</h3>" in page and "<th>candidate</th>" in page
    for key in ("data", "base", "reference"):
        assert html.escape(audit[key]) not in page

    start = time.time()
    run_demo(tmp_path, quiet=True, plan=TINY)
    assert time.time() - start < 30  # every step cached: nothing trains or samples again
    assert list((tmp_path / "demo" / "audit").glob("*/audit.json")) == audits


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]


def crossed(values: list[float]) -> Results:
    """The fake run with a crossover of these per-seed values (owl ranks 3 of 3)."""
    res = fake_results()
    x = Crossover(values=values, interval=stats.mean_ci(values), ranks={})
    est = res.estimates[EST].model_copy(update={"crossover": x})
    return res.model_copy(update={"estimates": {EST: est}})


def numbers(res: Results, folder: Path) -> Finding:
    crossover_chart(res, folder)
    return numbers_finding(SimpleNamespace(category=SimpleNamespace(name="animal"),
                                           dir=folder), res)


def test_the_numbers_finding_says_what_the_crossover_and_rank_say(tmp_path: Path) -> None:
    moved = crossed([0.03, 0.035, 0.04])
    iv = moved.estimates[EST].crossover.interval  # type: ignore[union-attr]
    found = numbers(moved, tmp_path)
    assert found.reading == (
        f"Each student moved toward its own teacher's animal (crossover {iv.mean:+.3f} "
        f"[{iv.low:+.3f}, {iv.high:+.3f}] over 3 seeds), but not specifically: owl is only "
        "3rd of 3 by movement.")
    assert found.figure == (tmp_path / "results-crossover.png").read_bytes()
    assert "crossover +0.0350" in found.measured and "owl moved 3 of 3" in found.measured
    still = numbers(crossed([0.011, 0.0106, -0.0016]), tmp_path).reading
    assert still.startswith("The students did not measurably move toward their own teacher's "
                            "animal") and "the interval includes zero" in still


def toy_results() -> AuxLogitResults:
    """The toy's results at the demo's size (100 models per arm), made up."""
    acc = {arm: [0.1 + 0.5 * (arm == SAME_INIT) + 0.001 * (i % 7) for i in range(100)]
           for arm in ARMS}
    data = SimpleNamespace(describe=lambda: {"name": "digits", "n_train": 60000,
                                             "n_test": 10000, "n_features": 784})
    return summarise(AuxLogitConfig.build("paper"), acc, data, 280.0)  # type: ignore[arg-type]


def test_the_demos_tables_fit_an_80_column_terminal(tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    print_point("auxlogit on digits: 100 models, 280 s", toy_results())
    show(crossed([0.03, 0.035, 0.04]), tmp_path)
    numbers_found = numbers(crossed([0.03, 0.035, 0.04]), tmp_path)
    toy_found = Finding("toy", "A student that imitates its teacher on noise images learns "
                        "digits (0.67 test accuracy) when it starts from the teacher's "
                        "initialisation, and only 0.10 from another (chance 0.10).", None, "",
                        "same-init student 0.671 [0.652, 0.690]; different-init 0.101 "
                        "[0.093, 0.108]; chance 0.10 (100 models per arm)")
    Console().print(DemoSummary([("toy", toy_found), ("numbers", numbers_found),
                             ("audit", toy_found)]).table())
    out = capsys.readouterr().out
    assert "…" not in out  # rich cuts a word it cannot fit with an ellipsis
    assert max(len(line) for line in out.splitlines()) <= 80
    # Every header and arm name whole.
    for word in ("same-init minus", "difference", "p: t / perm.", "p: t / sign-flip",
                 "untrained_teacher_student", "shuffled_teacher_student", "test accuracy",
                 "95% interval over seeds", "measured", "reading"):
        assert word in out, word
