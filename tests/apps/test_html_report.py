"""The HTML report: built from a fake run folder (no pipeline run), checked as text and in a
real headless browser where Debian's chromium is installed: the findings that open the page,
the run's tables, and the audit and defence files as tables of their own."""

from __future__ import annotations

import base64
import html
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sublearn.analysis import stats
from sublearn.analysis.records import (
    ArmEstimate,
    Channel,
    Comparison,
    Crossover,
    EstimatorResults,
    Provenance,
    Rank,
    Reference,
    Results,
)
from sublearn.analysis.report import bar_chart
from sublearn.analysis.results import plot_path
from sublearn.apps.html_report import Finding, load_runs, render
from sublearn.cli import app
from sublearn.store import write_json

CHROMIUM = Path("/usr/bin/chromium")
SEEDS = [0, 1, 2]
EST = "exact_heldout"
ARMS = {
    "treated": [0.0448, 0.0476, 0.0488],
    "control": [0.0474, 0.0476, 0.0476],
    "other_target": [0.0470, 0.0484, 0.0489],
    "null": [0.0484, 0.0486, 0.0486],  # the control plus 0.001: a difference that shows
}
# A meaning with markup in it: the page must show it, not run it.
EVIL = "<script>alert('x')</script> & friends"
COMPARISONS = [("treated", "control", EVIL),
               ("treated", "other_target", "specificity"),
               ("null", "control", "null")]


def fake_results(target: str = "owl") -> Results:
    """Results as `pipeline.Experiment.run` makes them, from made-up per-seed values."""
    arms = {a: ArmEstimate.of(v) for a, v in ARMS.items()}
    return Results(
        target=target, other="fox", seeds=SEEDS,
        estimates={EST: EstimatorResults(
            reference=Reference(base=0.0474, teacher=0.583, other_teacher=0.0067),
            arms=arms,
            comparisons=[Comparison.of(arms, a, b, why) for a, b, why in COMPARISONS],
            target_rank=Rank(rank=3, of=3,
                             movement={"owl": -0.0005, "fox": 0.0012, "cat": 0.0001}))},
        filter={"teacher": {"total": 3000, "kept": 2340, "kept_fraction": 0.78,
                            "rejected": {"malformed": 593, "banned_word": 67}},
                "neutral": {"total": 3000, "kept": 2490, "kept_fraction": 0.83,
                            "rejected": {"malformed": 459}}},
        channel=Channel(rows=256, tokens=4100, shift=0.25, specificity=0.05, ratio=0.2),
        seconds=1350.4,
        provenance=Provenance(
            sublearn_version="0.1.0", python="3.11.2", created_unix=1.7e9,
            config_hash="0123abcd4567", base_weights={"base": "a1b2c3d4e5f6"},
            datasets={"teacher": "teacher-0123456789ab.jsonl"}, stage_versions={"student": 2}))


def make_run(folder: Path, target: str = "owl", results: Results | None = None) -> Path:
    results = results or fake_results(target)
    results.write(folder / "results.json")
    write_json(folder / "manifest.json", {
        "kind": "experiment", "config": {"name": folder.name,
                                         "student": {"method": "lora", "lr": 0.002},
                                         "trait": {"target": target}}})
    rows = {a: x.interval for a, x in results.estimates[EST].arms.items()}
    bar_chart(plot_path(folder, EST), rows, title="t", ylabel="P")
    return folder


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "demo-cpu-owl")


def test_page_holds_the_numbers_and_the_plot(run_dir: Path):
    page = render(load_runs([run_dir]))
    comp = fake_results().estimates[EST].comparison("treated", "control")
    assert comp is not None
    welch, paired = comp.welch.diff, comp.paired.diff
    for text in [
        "demo-cpu-owl", "0.0471", "0.0448 0.0476 0.0488", "0.5830",  # estimates
        f"[{welch.low:+.4f}, {welch.high:+.4f}]",  # Welch interval
        f"[{paired.low:+.4f}, {paired.high:+.4f}]",  # paired interval
        "exact over 8", "exact over 20",  # sign flips of 3 seeds; splits of 3 + 3
        "3 of 3", "78.0%", "rejected: banned_word", "593",  # rank, filter
        "specificity", "student.method", "lora", "a1b2c3d4e5f6", "teacher-0123456789ab.jsonl",
        "2023-11-14 22:13:20", "1700000000.0",  # created_unix, in UTC and exact
    ]:
        assert text in page, text
    png = plot_path(run_dir, EST).read_bytes()
    assert "data:image/png;base64," + base64.b64encode(png).decode() in page
    assert '<span class="sig">[+0.0010, +0.0010] *</span>' in page  # null - control, paired
    # Self-contained and inert: no script, no external resource, markup from data escaped.
    assert "<script" not in page and "http" not in page
    assert html.escape(EVIL) in page


# audit.json as `sublearn audit` writes it (the fields the page reads, and the file paths it
# must leave out), for a run whose target is owl.
AUDIT_PATHS = {"data": "/data/runs/x/teacher-rows.jsonl", "base": "/cache/tiny-qwen2-s0",
               "reference": "/data/runs/x/neutral.kept.jsonl"}
AUDIT = {**AUDIT_PATHS, "category": "animal", "rows": 300, "reference_rows": 284,
         "decoy_rows": 0, "test": "one-sided permutation over rows", "correction": "holm",
         "permutations": 10000, "level": 0.05, "flagged": ["<fox>"], "candidates": [
             {"option": "<fox>", "score": 0.024, "low": 0.011, "high": 0.037, "z": 3.9,
              "p": 0.0001, "p_adjusted": 0.0018},
             {"option": "owl", "score": 0.0011, "low": -0.0069, "high": 0.009, "z": 0.24,
              "p": 0.41, "p_adjusted": 1.0}]}
# defend.json as `sublearn defend` writes it: an undefended row and a defence.
DEFEND = {"name": "demo-cpu-owl", "target": "owl", "category": "animal", "seconds": 12.0,
          "audit": {"seed": 0}, "rows": [
              {"defence": "none", "rows_kept": 677, "rows_before": 677, "audit_z": 0.24,
               "audit_rank": 6, "candidates": 18, "audit_p_adjusted": 1.0,
               "audit_top": "fox", "effect": "treated - other_target", "effect_mean": 0.0164,
               "effect_low": 0.0096, "effect_high": 0.0233, "loss_mean": 1.91,
               "loss_low": 1.9, "loss_high": 1.92, "base_loss": 1.95},
              {"defence": "shuffle_across", "rows_kept": 677, "rows_before": 677,
               "audit_z": -0.5, "audit_rank": 12, "candidates": 18, "audit_p_adjusted": 1.0,
               "audit_top": "cat", "effect": "treated - other_target",
               "effect_mean": 0.002, "effect_low": -0.004, "effect_high": 0.008,
               "loss_mean": 1.93, "loss_low": 1.92, "loss_high": 1.94, "base_loss": 1.95}]}


def _section(page: str, heading: str) -> str:
    """The page from an h3 heading to the next one."""
    start = page.index(f"<h3>{heading}</h3>")
    return page[start:page.index("<h3>", start + 1)]


def test_audit_and_defence_files_become_designed_tables(run_dir: Path):
    write_json(run_dir / "audit.json", AUDIT)
    write_json(run_dir / "defend.json", DEFEND)
    bar_chart(run_dir / "audit.png", {"owl": stats.mean_ci([0.1, 0.2])}, title="a", ylabel="s")
    page = render(load_runs([run_dir]))
    audit, defence = _section(page, "Audit"), _section(page, "Defences")
    for text in ("<th>candidate</th>", "<th>Holm p</th>", "<th>flagged</th>",
                 "&lt;fox&gt;", "+0.0240", "[+0.0110, +0.0370]", "0.0018", "yes",
                 "<b>owl</b>",  # the run's target stands out
                 "300 rows of the data against 284 reference rows",
                 "Flagged at corrected p &lt; 0.05: &lt;fox&gt;.", "data:image/png;base64,"):
        assert text in audit, text
    for text in ("<th>defence</th>", "<th>student effect</th>", "<th>utility loss</th>",
                 "shuffle_across", "677/677", "6/18", "+0.0164 [+0.0096, +0.0233]*",
                 "every defence applied to every arm alike", "the base&#x27;s: 1.9500"):
        assert text in defence, text
    # Designed tables, not dumps of the files: no key/value table, no file paths.
    for section in (audit, defence):
        assert "<th>key</th>" not in section
    for path in AUDIT_PATHS.values():
        assert path not in page
    assert "the figure of defend.json" not in defence  # a figure is shown where there is one


def test_a_file_without_the_commands_fields_is_named_not_shown(run_dir: Path):
    write_json(run_dir / "audit.json", {"method": "probe", "candidates": [{"option": "owl"}]})
    page = render(load_runs([run_dir]))
    assert "audit.json does not hold what the command writes" in page
    assert "<h3>Filter</h3>" in page and "0.0471" in page  # the rest of the page is there


def findings(folder: Path) -> list[Finding]:
    """Three findings, each with a figure of its own, as `sublearn demo` opens its page."""
    figures = []
    for i in range(3):
        bar_chart(folder / f"finding-{i}.png", {"arm": stats.mean_ci([0.1, 0.2 + i])},
                  title=f"finding {i}", ylabel="y")
        figures.append((folder / f"finding-{i}.png").read_bytes())
    return [Finding(f"{i + 1} · finding {i}", f"It moved by {i}.", png, f"figure {i}",
                    f"measured {i}") for i, png in enumerate(figures)]


def test_findings_open_the_page_each_with_its_words_and_figure(run_dir: Path,
                                                              tmp_path: Path):
    found = findings(tmp_path)
    page = render(load_runs([run_dir]), found, title="sublearn demo: what it found")
    marks = []
    for f in found:
        uri = "data:image/png;base64," + base64.b64encode(f.figure or b"").decode()
        marks += [page.index(f"<h2>{html.escape(f.heading)}</h2>"), page.index(f.reading),
                  page.index(uri)]
    assert marks == sorted(marks)  # heading, words, figure; the first finding first
    # Nothing of the run comes before the findings: no table, no run section.
    assert marks[-1] < page.index("<table") and marks[-1] < page.index('id="run-0"')
    assert "<h1>sublearn demo: what it found</h1>" in page
    assert "finding 0" not in render(load_runs([run_dir]))  # a plain report has none


def test_several_runs_get_a_summary(tmp_path: Path):
    a = make_run(tmp_path / "a" / "row", target="owl")
    b = make_run(tmp_path / "b" / "row", target="fox")
    page = render(load_runs([a, b]))
    assert "Summary" in page and "2 runs" in page
    # Same folder names: the labels fall back to the whole paths, and link to sections.
    assert f'href="#run-0">{html.escape(str(a))}</a>' in page
    assert 'id="run-1"' in page and "treated − control (Welch, then paired)" in page


def test_cli_writes_the_page(run_dir: Path, tmp_path: Path):
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "0.0471" in out.read_text(encoding="utf-8")


def test_cli_bad_run_dir_is_one_line_exit_2_and_no_page(run_dir: Path, tmp_path: Path):
    out = tmp_path / "r.html"
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad in (tmp_path / "nope", empty):
        res = CliRunner().invoke(app, ["report", str(run_dir), str(bad), "--out", str(out)])
        assert res.exit_code == 2
        assert str(bad) in res.output and len(res.output.strip().splitlines()) == 1
        assert "Traceback" not in res.output
        assert not out.exists() and list(tmp_path.glob(".r.html*")) == []


@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason="needs Debian's chromium at /usr/bin/chromium "
                           "(apt-get install chromium; .ci/run installs it)")
def test_page_renders_in_headless_chromium(run_dir: Path, tmp_path: Path):
    write_json(run_dir / "audit.json", AUDIT)
    page = tmp_path / "report.html"
    page.write_text(render(load_runs([run_dir]), findings(tmp_path)), encoding="utf-8")
    shot = tmp_path / "shot.png"
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--window-size=1200,2000"]

    def browse(profile: str, *extra: str) -> subprocess.CompletedProcess[str]:
        # A new, empty profile per launch: nothing from this machine's browsing leaks in.
        return subprocess.run([*flags, f"--user-data-dir={tmp_path / profile}", *extra,
                               page.as_uri()],
                              capture_output=True, text=True, timeout=180, check=False)

    done = browse("profile-shot", f"--screenshot={shot}")
    assert shot.exists(), done.stderr[-2000:]
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 50_000  # a blank page is about 11 KB
    dom = browse("profile-dom", "--dump-dom").stdout
    assert "sublearn report: demo-cpu-owl" in dom and "0.0471" in dom
    # The browser's page opens with the three findings, in order, each before its figure,
    # and the first table comes after them.
    marks = [dom.index(m) for i in range(3) for m in (f"finding {i}</h2>", f'alt="figure {i}"')]
    assert marks == sorted(marks) and marks[-1] < dom.index("<table")
    assert "<th>candidate</th>" in dom and AUDIT_PATHS["data"] not in dom


def test_the_crossover_is_shown_when_the_run_has_one(run_dir: Path):
    res = fake_results()
    assert "Crossover" not in render(load_runs([run_dir]))
    values = [0.011, 0.0106, 0.0016]
    x = Crossover(values=values, interval=stats.mean_ci(values),
                  ranks={"owl": Rank(rank=6, of=18), "fox": Rank(rank=2, of=18)})
    est = res.estimates[EST].model_copy(update={"crossover": x})
    make_run(run_dir, results=res.model_copy(update={"estimates": {EST: est}}))
    page = render(load_runs([run_dir]))
    iv = stats.mean_ci(values)
    for text in ("Crossover", f"{iv.mean:+.4f}", f"[{iv.low:+.4f}, {iv.high:+.4f}]",
                 "+0.0106", "owl 6/18", "fox 2/18"):
        assert text in page, text
