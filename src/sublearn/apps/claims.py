"""`sublearn claims`: run the literature's claims (configs/claims/) and write their table.

The table (docs/claims.md by default) has one row per claim and model: the claim, its source,
the published figure and model, sublearn's figure per condition with its interval over seeds,
the verdict and the command. Below it, each claim's detail: what differs from the published
setting, every seed's value and the paired comparisons. Every run is cached (the sweep's
markers and the store's artifacts), so a rerun only re-renders the table.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from sublearn.analysis.records import Results
from sublearn.analysis.stats import Interval
from sublearn.experiment import claims
from sublearn.experiment.claims import ClaimSpec, Measured
from sublearn.store import write_text

DEFAULT_FOLDER = Path(str(files("sublearn") / "configs" / "claims"))

# Why the table has no real-model rows yet, from the costs measured in docs/real-model.md.
REAL_MODEL = (
    "**The real model (SmolLM2-135M-Instruct) has no rows yet: its cells do not fit a CPU "
    "session.** Measured on one core (docs/real-model.md, the fine-tuned-teacher run): "
    "a teacher 6.6-7.1 min, a full-parameter student 3.9-4.7 min, an evaluation 0.9-1.6 min. "
    "One condition here is 3 arms x 5 seeds = 15 students with their evaluations, so about "
    "70-95 min of one core per condition, beyond the shared teachers, samples and soft "
    "labels (about 55 min at 1,000 prompts: 3 teachers, 3 x 1,000 completions at 1.8-2.3 min "
    "per 200), and 2.5-8 hours per claim (2 to 5 conditions). A copy of the claims folder "
    "whose `_organism.toml` sets `base.path` and `evaluation.answer = \"stem\"` (as "
    "`configs/smollm2-135m-finetuned.toml` does) runs every claim there: "
    "`sublearn claims --folder COPY --root runs/claims-smollm`.")


@dataclass(frozen=True)
class Row:
    spec: ClaimSpec
    measured: list[Measured]
    verdict: str
    why: str

    @property
    def seconds(self) -> float:
        return sum(m.seconds for m in self.measured)


def _signed(iv: Interval) -> str:
    if not math.isfinite(iv.low):
        return f"{iv.mean:+.4f} (one seed)"
    return f"{iv.mean:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]"


EXPECTED = {"transfer": "transfer (> 0)", "none": "no transfer (interval holds 0)",
            "below": "below {than}", "above": "above {than}"}


def _expected(m: Measured, reference: str) -> str:
    return EXPECTED[m.condition.expect].format(than=m.condition.than or reference)


def _cell(m: Measured, reference: str) -> str:
    c = m.condition
    parts = [f"{c.label or c.name}: {_signed(m.interval)}"]
    if m.versus is not None:
        parts.append(f"vs {c.than or reference} {_signed(m.versus)}")
    if m.share is not None:
        parts.append(f"{100 * m.share:.0f}% of {reference}")
    mark = "as predicted" if m.met else "**not as predicted**"
    return f"{'; '.join(parts)} — predicted {_expected(m, reference)}: {mark}"


def _statistics(spec: ClaimSpec) -> str:
    stats = dict.fromkeys(spec.statistic(c) for c in spec.claim.conditions)
    return ", ".join(f"`{s}`" for s in stats) or "—"


def _setting(spec: ClaimSpec) -> str:
    """The model and the shared setting of a claim's conditions (from its first one)."""
    if not spec.configs:
        return "—"
    cfg = next(iter(spec.configs.values()))
    model = cfg.base.path or cfg.base.model or f"embedded base {cfg.base.embedded.seed}"
    return (f"{model}; {cfg.student.labels} labels, {cfg.data.prompts:,} prompts "
            f"({cfg.data.subsample:,}-row subsample), {len(cfg.seeds)} seeds")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def table(rows: Sequence[Row]) -> str:
    head = ("| claim | source | published (model) | sublearn: model, setting, statistic | "
            "sublearn's figure, 95% interval over seeds | verdict | cost | command |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        c = r.spec.claim
        ref = c.conditions[0].name if c.conditions else ""
        figure = "<br>".join(_cell(m, ref) for m in r.measured) or "—"
        cost = _duration(r.seconds) if r.measured else "—"
        lines.append(
            f"| {c.title} | {c.source} | {c.published} ({c.published_model}) | "
            f"{_setting(r.spec)}; {_statistics(r.spec)} on {c.estimator} | {figure} | "
            f"**{r.verdict}**: {r.why} | {cost} | `sublearn claims {r.spec.name}` |")
    return head + "\n".join(lines) + "\n"


def details(r: Row) -> str:
    c = r.spec.claim
    out = [f"### {r.spec.name}: {c.title}", "", f"Verdict: **{r.verdict}** ({r.why})."]
    if c.notes:
        out += ["", c.notes]
    if c.untestable:
        out += ["", f"Not measured: {c.untestable}."]
    for m in r.measured:
        seeds = ", ".join(f"{v:+.4f}" for v in m.values)
        out.append(f"- {m.condition.label or m.condition.name} (`{m.statistic}`, run folder "
                   f"`{r.spec.configs[m.condition.name].name}`): per seed {seeds}; "
                   f"{m.seconds:.0f} s of task time")
    return "\n".join(out) + "\n"


def _disagreements(rows: Sequence[Row]) -> str:
    off = [r for r in rows if r.verdict in ("does not hold", "partly holds")]
    if not off:
        return "No claim measured here disagrees with its publication.\n"
    return "\n".join(f"- **{r.spec.name}** ({r.verdict}): {r.spec.claim.title}; {r.why}."
                     for r in off) + "\n"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def document(rows: Sequence[Row], root: Path) -> str:
    intro = (
        f"Written by `sublearn claims` from the runs under `{root}` (commit {_commit()}; "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}). Each claim is a file in "
        "`configs/claims/`: the claim, its source and published figure, and its conditions "
        "as experiment settings, each with what the claim predicts for it. A figure is the "
        "claim's statistic (the table names it: `treated - control` is the treated students' "
        "P(target) minus the control students', seed by seed) with its 95% t interval over "
        "student seeds; \"vs\" is the paired difference to another condition, \"% of\" the "
        "share of the reference's mean. Cost is the conditions' task time (students trained "
        "and evaluated, and the shared teachers and data where a task built them). "
        "Verdicts: the first condition is the reference; a claim about removing or changing "
        "a transfer is judged on its other conditions, and only when the reference shows "
        "transfer (else \"not testable here\"); a claim of predictions (the LoRA ranks) is "
        "judged on all of them. It holds when every judged condition is as predicted, does "
        "not hold when none is. \"No transfer\" is an interval that holds zero: at 5 seeds "
        "a weak statement, so the share of the reference's effect stands beside it. "
        "Rerunning the command finds every run cached and only rewrites this file.")
    return "\n".join([
        "# The literature's claims, measured", "", intro, "",
        "## Where sublearn disagrees with the publication", "", _disagreements(rows),
        "## The table", "", table(rows), REAL_MODEL, "",
        "## Each claim", "", *[details(r) for r in rows]])


def claims_command(names: Sequence[str], folder: Path, root: Path, out: Path | None,
                   address: str | None, workers: int | None, sequential: bool,
                   quiet: bool) -> tuple[list[Row], Path | None]:
    """Run the named claims (all by default) and write their document to `out`."""
    specs = claims.select(folder, names)
    outcome = claims.run(specs, root, address, workers, sequential, quiet)
    results: dict[str, Results] = dict(outcome.results) if outcome else {}
    seconds = outcome.point_seconds if outcome else {}
    rows = []
    for spec in specs:
        measured = [] if spec.claim.untestable else claims.measure(spec, results, seconds)
        rows.append(Row(spec, measured, *claims.verdict(spec, measured)))
    if out is not None:
        write_text(out, document(rows, root))
    return rows, out
