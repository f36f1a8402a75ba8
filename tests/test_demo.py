"""`sublearn demo` end to end at toy sizes: the three steps, the summary, the report, and a
second run that reads every step back."""

from __future__ import annotations

import time

from sublearn.demo import Plan, run_demo
from tests.conftest import MICRO

TINY = Plan(
    overrides=(*(f"base.embedded.{k}={v}" for k, v in MICRO.items()),
               "data.prompts=24", "data.subsample=24", "seeds=[0, 1]", "student.epochs=1",
               "teacher.finetune.epochs=1", "name=demo-test",
               # The micro model writes few clean lists; the filter has its own tests.
               "filter.strict_numbers=false"),
    toy_options=(("n_models", 3), ("hidden", (8, 8)), ("teacher_epochs", 1),
                 ("student_epochs", 1), ("noise_size", 256)),
    audit_rows=8,
)


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

    start = time.time()
    run_demo(tmp_path, quiet=True, plan=TINY)
    assert time.time() - start < 30  # every step cached: nothing trains or samples again
    assert list((tmp_path / "demo" / "audit").glob("*/audit.json")) == audits
