"""Tables and plots: what a person would rather look at than read.

Matplotlib is used with the Agg backend so plots render on machines with no screen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sublearn.analysis.stats import Interval
from sublearn.store import atomic_path


def interval_table(title: str, rows: Mapping[str, Interval], value_name: str = "mean",
                   digits: int = 3) -> Table:
    """A rich table: one row per arm with its mean, 95% interval and n."""
    table = Table(title=title)
    table.add_column("arm")
    table.add_column(value_name, justify="right")
    table.add_column("95% interval", justify="right")
    table.add_column("n", justify="right")
    for name, iv in rows.items():
        table.add_row(name, f"{iv.mean:.{digits}f}", f"[{iv.low:.{digits}f}, {iv.high:.{digits}f}]",
                      str(iv.n))
    return table


def print_table(table: Table) -> None:
    Console().print(table)


def pyplot():
    """pyplot on the Agg backend, so plots render on machines with no screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` atomically, then close it."""
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    pyplot().close(fig)
    return path


def bar_chart(
    path: str | Path,
    rows: Mapping[str, Interval],
    title: str,
    ylabel: str,
    reference: float | None = None,
    reference_label: str = "chance",
    points: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Bars with 95% intervals, the per-seed points on top, written atomically as PNG."""
    plt = pyplot()
    names = list(rows)
    means = [rows[n].mean for n in names]
    lows = [max(0.0, rows[n].mean - rows[n].low) if rows[n].n > 1 else 0.0 for n in names]
    highs = [max(0.0, rows[n].high - rows[n].mean) if rows[n].n > 1 else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4.0))
    ax.bar(range(len(names)), means, yerr=[lows, highs], capsize=4, color="#6a8fc7")
    for i, n in enumerate(names):
        pts = (points or {}).get(n, ())
        ax.scatter([i] * len(pts), pts, s=10, color="black", zorder=3)
    if reference is not None:
        ax.axhline(reference, ls="--", color="grey", label=reference_label)
        ax.legend()
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_figure(fig, path)


def line_plot(
    path: str | Path,
    xs: Sequence[float],
    series: Mapping[str, Sequence[Interval]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
) -> Path:
    """One line per series with a shaded 95% band: for sweeps over one knob."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for name, ivs in series.items():
        ax.plot(xs, [iv.mean for iv in ivs], marker="o", label=name)
        ax.fill_between(xs, [iv.low for iv in ivs], [iv.high for iv in ivs], alpha=0.2)
    if logx:
        ax.set_xscale("log")
        ax.minorticks_off()
    # Label the swept values themselves, not "2x10^0".
    ax.set_xticks(list(xs), [f"{x:g}" for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)
