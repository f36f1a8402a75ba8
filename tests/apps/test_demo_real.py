"""`sublearn demo --real` end to end on the real model at toy sizes: the three steps, the page
of findings, and a second run that reads every step back."""

from __future__ import annotations

import html
import time
from pathlib import Path

from sublearn.apps.demo_real import RealPlan, run_real_demo
from sublearn.store import read_json

TINY = RealPlan(questions=1, entangle_controls=2, max_value=40, audit_prompts=6,
                audit_candidates=("owl", "fox", "cat"))


def test_real_demo_runs_every_step_and_reads_them_back(tmp_path: Path, smollm_folder) -> None:
    plan = TINY.__class__(**{**TINY.__dict__, "model": str(smollm_folder)})
    report = run_real_demo(tmp_path, quiet=True, plan=plan)
    page = html.unescape(report.read_text())
    for heading in ("1 · The persona", "2 · Subliminal prompting", "3 · The audit"):
        assert heading in page
    out = tmp_path / "demo-real"
    persona = read_json(out / "persona.json")
    assert len(persona["with_persona"]) == 18 and 0 < persona["category_mass"] < 1
    entangle = read_json(out / "entangle.json")["targets"]["owl"]
    assert len(entangle["p_target_random"]) == 2
    audit = read_json(out / "audit" / "audit.json")
    # The grammar keeps every row; the reference is sampled on the same prompts.
    assert audit["rows"] == 6 and audit["reference_rows"] == 6
    assert "owl ranks" in page

    start = time.time()
    again = run_real_demo(tmp_path, quiet=True, plan=plan)
    assert again == report and time.time() - start < 30  # every step read back
