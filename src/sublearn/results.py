"""Show an experiment's results: tables in the terminal, a bar chart with intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sublearn.errors import SublearnError
from sublearn.report import bar_chart
from sublearn.stats import Interval, mean_ci

LABELS = {
    "exact": "exact P(target | category), training questions",
    "exact_heldout": "exact P(target | category), held-out questions",
    "sampled": "sampled rate (T=1)",
    "numbers_prefix": "exact P(target | category), numbers-prefixed questions",
    "multiple_choice": "multiple choice P(target letter)",
}


def _iv(d: dict[str, Any]) -> Interval:
    return Interval(**d)


def plot_path(run_dir: Path, estimator: str) -> Path:
    """Where `show` writes an estimator's bar chart in a run folder."""
    return run_dir / f"results-{estimator}.png"


def _method_cell(d: dict[str, Any], p_key: str) -> str:
    """One method's interval over its t-test and permutation p-values, for a table cell."""
    iv = _iv(d["diff"])
    return (f"[{iv.low:+.4f}, {iv.high:+.4f}]\n"
            f"{d[p_key]:.3g} / {d['permutation_p']:.3g}")


def show(results: dict[str, Any], out_dir: Path, console: Console | None = None) -> list[Path]:
    """Print every estimator's table and write one PNG per estimator; return the PNG paths."""
    console = console or Console()
    pngs = []
    target = results["target"]
    for est in results["estimators"]:
        t = Table(title=f"{LABELS.get(est, est)} — target '{target}'")
        for col in ("model / arm", "mean", "95% interval over seeds", "per seed"):
            t.add_column(col, justify="left" if col.startswith("model") else "right")
        for name, v in results["reference"][est].items():
            t.add_row(name, f"{v:.4f}", "(single model)", "")
        for arm, d in results["arms"][est].items():
            iv = _iv(d["interval"])
            t.add_row(arm, f"{iv.mean:.4f}", f"[{iv.low:.4f}, {iv.high:.4f}]",
                      " ".join(f"{x:.3f}" for x in d["per_seed"]))
        console.print(t)
        # The meaning of each comparison is in results.json; the table stays narrow enough
        # for an 80-column terminal: each method's interval sits over its two p-values.
        c = Table(title="differences (a - b): Welch, and paired by student seed")
        for col in ("comparison", "difference", "Welch 95% interval\np: t / perm.",
                    "paired 95% interval\np: t / sign-flip"):
            c.add_column(col)
        for name, d in results["comparisons"][est].items():
            iv = _iv(d["diff"])
            # Run folders written before paired statistics have no "paired" entry.
            paired = _method_cell(d["paired"], "paired_p") if "paired" in d else "—"
            c.add_row(name, f"{iv.mean:+.4f}", _method_cell(d, "welch_p"), paired)
        console.print(c)
        rank = results.get("target_rank", {}).get(est)
        if rank:
            console.print(f"target rank by movement (treated - control): "
                          f"{rank['rank']} of {rank['of']}\n")
        rows = {a: _iv(d["interval"]) for a, d in results["arms"][est].items()}
        points = {a: d["per_seed"] for a, d in results["arms"][est].items()}
        pngs.append(bar_chart(plot_path(out_dir, est), rows,
                              title=f"{LABELS.get(est, est)}: '{target}'",
                              ylabel="P(target)", reference=results["reference"][est].get("base"),
                              reference_label="base model", points=points))
    for name, rep in results.get("filter", {}).items():
        console.print(f"filter {name}: kept {rep['kept']}/{rep['total']} "
                      f"({rep['kept_fraction']:.1%}); rejected {rep['rejected']}")
    return pngs


# The campaign table's columns: a comparison key in results.json and its short header.
SUMMARY_COLUMNS = [
    ("treated - control", "treated − control"),
    ("treated - other_target", "treated − other target"),
    ("null - control", "null − control"),
    ("cross_treated - cross_control", "cross-base"),
]


def _cell(iv: Interval) -> str:
    star = "*" if iv.excludes(0.0) else ""
    return f"{iv.mean:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}]{star}"


def summary_table(runs: dict[str, dict[str, Any]], estimator: str = "exact_heldout",
                  pooled: bool = False) -> str:
    """One markdown row per run (label -> results.json), for a campaign over settings.

    Each cell is the mean difference with its 95% interval over student seeds (* = excludes
    0). With `pooled`, a last row treats each run's mean difference as one value (one base
    seed per run, say) and gives the t interval over runs: the variance that matters when a
    recipe must hold across bases, not only across student seeds of one base.
    """
    head = ["run", *[h for _, h in SUMMARY_COLUMNS], "target rank", "teacher P(target)",
            "base P(target)", "channel ratio", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    per_run: dict[str, list[float]] = {k: [] for k, _ in SUMMARY_COLUMNS}
    for label, r in runs.items():
        if estimator not in r["comparisons"]:
            raise SublearnError(f"{label}: no '{estimator}' estimator in its results")
        comps = r["comparisons"][estimator]
        cells = []
        for key, _ in SUMMARY_COLUMNS:
            if key in comps:
                iv = _iv(comps[key]["diff"])
                cells.append(_cell(iv))
                per_run[key].append(iv.mean)
            else:
                cells.append("—")
        rank = r.get("target_rank", {}).get(estimator)
        ref = r["reference"][estimator]
        teacher = ref.get("teacher_teacher")
        lines.append("| " + " | ".join([
            label, *cells, f"{rank['rank']}/{rank['of']}" if rank else "—",
            f"{teacher:.3f}" if teacher is not None else "—", f"{ref['base']:.3f}",
            f"{r['channel']['ratio']:.3f}" if "channel" in r else "—",
            f"{r['seconds']:.0f}"]) + " |")
    if pooled and len(runs) > 1:
        cells = [_cell(mean_ci(v)) if len(v) == len(runs) else "—"
                 for v in (per_run[k] for k, _ in SUMMARY_COLUMNS)]
        lines.append("| " + " | ".join([f"**pooled over {len(runs)} runs**", *cells,
                                         "", "", "", "", ""]) + " |")
    return "\n".join(lines)
