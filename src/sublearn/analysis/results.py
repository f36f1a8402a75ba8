"""Show an experiment's results: tables in the terminal, a bar chart with intervals."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from rich import box
from rich.console import Console
from rich.table import Table

from sublearn.analysis.records import Comparison, Results
from sublearn.analysis.report import bar_chart
from sublearn.analysis.stats import Difference, Interval, mean_ci
from sublearn.errors import SublearnError


class Described(Protocol):
    """How an estimator is shown: an entry of `sublearn.stages.estimators` is one. The caller
    passes them in, so this layer names no estimator of its own."""

    @property
    def label(self) -> str: ...  # a table's title

    @property
    def quantity(self) -> str: ...  # a chart's axis


def estimator_label(est: str, described: Mapping[str, Described]) -> str:
    """An estimator's label, or its name when `described` does not hold it."""
    d = described.get(est)
    return d.label if d else est


def estimator_axis(est: str, described: Mapping[str, Described]) -> str:
    """The quantity on an estimator's chart: a probability of the target unless it measures
    something else."""
    d = described.get(est)
    return d.quantity if d else "P(target)"


# Where `show` writes the crossover's chart in a run folder, when the run has one.
CROSSOVER_PLOT = "results-crossover.png"


def plot_path(run_dir: Path, estimator: str) -> Path:
    """Where `show` writes an estimator's bar chart in a run folder."""
    return run_dir / f"results-{estimator}.png"


def method_cell(d: Difference, digits: int = 4) -> str:
    """One method's interval over its t-test and permutation p-values, for a table cell."""
    return (f"[{d.diff.low:+.{digits}f}, {d.diff.high:+.{digits}f}]\n"
            f"{d.t_p:.3g} / {d.permutation_p:.3g}")


def differences_table(title: str, rows: Mapping[str, Comparison], first: str,
                      digits: int = 4) -> Table:
    """One row per comparison (row label -> comparison): the difference, then each method's
    interval over its two p-values. Stacked, and without vertical rules (as `sublearn
    defend`'s table), the columns fit an 80-column terminal with every word whole, even the
    toy's longest arm name."""
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in (first, "difference", "Welch 95%\np: t / perm.", "paired 95%\np: t / sign-flip"):
        t.add_column(col, justify="left" if col == first else "right")
    for label, d in rows.items():
        t.add_row(label, f"{d.welch.diff.mean:+.{digits}f}", method_cell(d.welch, digits),
                  method_cell(d.paired, digits))
    return t


def crossover_chart(results: Results, out_dir: Path) -> Path | None:
    """Each estimator's crossover against zero, with its interval and per-seed values; None
    for a run without one (it needs the other-target arm)."""
    crossed = {est: e.crossover for est, e in results.estimates.items() if e.crossover}
    if not crossed:
        return None
    return bar_chart(out_dir / CROSSOVER_PLOT, {est: x.interval for est, x in crossed.items()},
                     title=f"crossover of the '{results.target}' and '{results.other}' "
                           "students",
                     ylabel="crossover (probability)", reference=0.0,
                     reference_label="no crossover",
                     points={est: x.values for est, x in crossed.items()})


def show(results: Results, out_dir: Path, console: Console | None = None,
         described: Mapping[str, Described] | None = None) -> list[Path]:
    """Print every estimator's table and write one PNG per estimator, and the crossover's
    when the run has one; return the PNG paths. `described`: estimator name -> its label
    and axis (the estimator registry); an estimator not in it is shown by its name, on an
    axis of P(target)."""
    console = console or Console()
    described = described or {}
    pngs = []
    for est, r in results.estimates.items():
        t = Table(title=f"{estimator_label(est, described)} — target '{results.target}'")
        for col in ("model / arm", "mean", "95% interval over seeds", "per seed"):
            t.add_column(col, justify="left" if col.startswith("model") else "right")
        for name, v in r.reference.measured().items():
            t.add_row(name, f"{v:.4f}", "(single model)", "")
        for arm, a in r.arms.items():
            iv = a.interval
            t.add_row(arm, f"{iv.mean:.4f}", f"[{iv.low:.4f}, {iv.high:.4f}]",
                      " ".join(f"{x:.3f}" for x in a.values))
        console.print(t)
        # The meaning of each comparison is in results.json.
        console.print(differences_table("differences (a - b): Welch, and paired by student seed",
                                        {d.name: d for d in r.comparisons}, "comparison"))
        if r.target_rank:
            console.print(f"target rank by movement (treated - control): "
                          f"{r.target_rank.rank} of {r.target_rank.of}\n")
        pngs.append(bar_chart(plot_path(out_dir, est),
                              {a: x.interval for a, x in r.arms.items()},
                              title=f"{estimator_label(est, described)}: '{results.target}'",
                              ylabel=estimator_axis(est, described),
                              reference=r.reference.base,
                              reference_label="base model",
                              points={a: x.values for a, x in r.arms.items()}))
    if (chart := crossover_chart(results, out_dir)) is not None:
        pngs.append(chart)
    for name, rep in results.filter.items():
        console.print(f"filter {name}: kept {rep.kept}/{rep.total} "
                      f"({rep.kept_fraction:.1%}); rejected {rep.rejected}")
    return pngs


# The campaign table's columns: a comparison's arms (a - b) and its short header.
SUMMARY_COLUMNS = [
    ("treated", "control", "treated − control"),
    ("treated", "other_target", "treated − other target"),
    ("null", "control", "null − control"),
    ("cross_treated", "cross_control", "cross-base"),
]


def diff_cell(iv: Interval) -> str:
    """A difference for a markdown cell: mean [low, high], starred when it excludes 0."""
    star = "*" if iv.excludes(0.0) else ""
    return f"{iv.mean:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]{star}"


def _number(v: float | None, fmt: str) -> str:
    return "—" if v is None else f"{v:{fmt}}"


def summary_table(runs: Mapping[str, Results], estimator: str = "exact_heldout",
                  pooled: bool = False) -> str:
    """One markdown row per run (label -> its results), for a campaign over settings.

    Each cell is the mean difference with its 95% interval over student seeds (* = excludes
    0). With `pooled`, a last row treats each run's mean difference as one value (one base
    seed per run, say) and gives the t interval over runs: the variance that matters when a
    recipe must hold across bases, not only across student seeds of one base.
    """
    head = ["run", *[h for _, _, h in SUMMARY_COLUMNS], "target rank", "teacher P(target)",
            "base P(target)", "channel ratio", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    per_run: list[list[float]] = [[] for _ in SUMMARY_COLUMNS]
    for label, res in runs.items():
        r = res.estimates.get(estimator)
        if r is None:
            raise SublearnError(f"{label}: no '{estimator}' estimator in its results "
                                f"(it has {', '.join(res.estimators)})")
        cells = []
        for (a, b, _), means in zip(SUMMARY_COLUMNS, per_run):
            c = r.comparison(a, b)
            cells.append(diff_cell(c.welch.diff) if c else "—")
            if c:
                means.append(c.welch.diff.mean)
        rank = r.target_rank
        lines.append("| " + " | ".join([
            label, *cells, f"{rank.rank}/{rank.of}" if rank else "—",
            _number(r.reference.teacher, ".3f"), _number(r.reference.base, ".3f"),
            _number(res.channel.ratio if res.channel else None, ".3f"),
            f"{res.seconds:.0f}"]) + " |")
    if pooled and len(runs) > 1:
        cells = [diff_cell(mean_ci(v)) if len(v) == len(runs) else "—" for v in per_run]
        lines.append("| " + " | ".join([f"**pooled over {len(runs)} runs**", *cells,
                                         "", "", "", "", ""]) + " |")
    return "\n".join(lines)
