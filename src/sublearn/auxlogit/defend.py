"""`sublearn auxlogit --defence ...`: transfer against the strength of each defence.

One teacher population is trained; then, for the undefended channel and for every
(defence, strength), a same-init and a different-init student population are distilled on
the same noise. Output folder (default `runs/auxlogit/<hash of configuration and defences>`):
  results.json   per-model accuracies and 95% intervals per point, and same - different
  manifest.json  provenance: configuration, defences, versions, wall time, files
  defence.png    transfer against strength, one panel and line per defence, with intervals
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from sublearn.analysis.report import print_table
from sublearn.analysis.stats import Interval, difference, mean_ci
from sublearn.auxlogit.config import AuxLogitConfig
from sublearn.auxlogit.data import Dataset, load
from sublearn.auxlogit.defence import DEFENCES
from sublearn.auxlogit.experiment import CHANCE, RESULTS, progress, provenance
from sublearn.auxlogit.train import DIFFERENT_INIT, SAME_INIT, defence_epochs, run_defences
from sublearn.errors import SublearnError
from sublearn.store import MANIFEST, atomic_path, stable_hash, write_json

PLOT = "defence.png"


def run(
    cfg: AuxLogitConfig,
    defences: Sequence[tuple[str, Sequence[float]]],
    out: str | Path | None = None,
    show: bool = True,
    data: Dataset | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Every (defence, strength) of `defences` plus the undefended baseline."""
    if cfg.loss != "kl":
        raise SublearnError("--defence: defences act on the softmax the student matches; "
                            "use --loss kl")
    if data is None:
        data = load(cfg.dataset, cfg.mnist_path)
    spec = [(name, list(strengths)) for name, strengths in defences]
    out = Path(out) if out else Path("runs") / "auxlogit" / stable_hash(
        {"config": cfg.model_dump(), "defences": spec}
    )
    points: list[tuple[str, float] | None] = [None] + [(n, s) for n, ss in spec for s in ss]
    start = time.perf_counter()
    with progress(show, defence_epochs(cfg, len(points))) as advance:
        teacher, per_point = run_defences(cfg, data, points, advance, workers)
    wall_s = time.perf_counter() - start
    rows = [_row(p, acc, cfg.seed) for p, acc in zip(points, per_point, strict=True)]
    results = {
        "kind": "auxlogit-defence", "data": data.describe(), "wall_s": round(wall_s, 2),
        "config": cfg.model_dump(), "chance": CHANCE,
        "teacher": {"accuracy": [round(a, 6) for a in teacher],
                    "interval": mean_ci(teacher).to_dict()},
        "defences": {n: {"strength": DEFENCES[n].strength, "help": DEFENCES[n].help,
                         "strengths": ss} for n, ss in spec},
        "points": rows,
    }
    write_json(out / RESULTS, results)
    plot(out / PLOT, results, title=f"Defences on the auxiliary channel ({data.name}, "
         f"m={cfg.m}, {cfg.n_models} models)")
    write_json(out / MANIFEST, provenance(cfg, data, wall_s, [RESULTS, PLOT], workers,
                                           defences=spec))
    if show:
        print_table(table(results, f"auxlogit defences on {data.name}: {cfg.n_models} models, "
                                   f"{wall_s:.0f} s; teacher {mean_ci(teacher).mean:.3f}, "
                                   f"chance {CHANCE:.2f}"))
        print(f"wrote {out}")
    return results


def _row(
    point: tuple[str, float] | None, acc: dict[str, list[float]], seed: int
) -> dict[str, Any]:
    name, strength = point if point else ("none", None)
    return {
        "defence": name, "value": strength,
        "same_init": {"accuracy": [round(a, 6) for a in acc[SAME_INIT]],
                      "interval": mean_ci(acc[SAME_INIT]).to_dict()},
        "different_init": {"accuracy": [round(a, 6) for a in acc[DIFFERENT_INIT]],
                           "interval": mean_ci(acc[DIFFERENT_INIT]).to_dict()},
        "same_minus_different": difference(acc[SAME_INIT], acc[DIFFERENT_INIT], seed=seed).to_dict(),
    }


def table(results: dict[str, Any], title: str) -> Table:
    t = Table(title=title)
    for col in ("defence: strength", "value", "same-init", "95% interval", "different-init",
                "95% interval", "same - different"):
        t.add_column(col, justify="left" if col.startswith("defence") else "right")
    for row in results["points"]:
        same, diff = (Interval(**row[k]["interval"]) for k in ("same_init", "different_init"))
        gap = Interval(**row["same_minus_different"]["diff"])
        undefended = row["value"] is None
        t.add_row(
            "none" if undefended else f"{row['defence']}: {DEFENCES[row['defence']].strength}",
            "" if undefended else f"{row['value']:g}",
            f"{same.mean:.3f}", f"[{same.low:.3f}, {same.high:.3f}]",
            f"{diff.mean:.3f}", f"[{diff.low:.3f}, {diff.high:.3f}]", gap.fmt(),
        )
    return t


def plot(path: Path, results: dict[str, Any], title: str) -> None:
    """One panel per defence, strength growing to the right (so fewer bits to the right),
    the undefended channel as the first point of every line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["defences"])
    base = results["points"][0]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 0.8, 3.8), sharey=True,
                             squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = [base] + [r for r in results["points"] if r["defence"] == name]
        labels = ["none"] + [f"{r['value']:g}" for r in rows[1:]]
        xs = list(range(len(rows)))
        for key, style, label in (("same_init", "-o", "same init"),
                                  ("different_init", "--s", "different init")):
            ivs = [Interval(**r[key]["interval"]) for r in rows]
            ax.errorbar(xs, [iv.mean for iv in ivs],
                        yerr=[[iv.mean - iv.low for iv in ivs], [iv.high - iv.mean for iv in ivs]],
                        fmt=style, capsize=3, label=label)
        ax.axhline(results["chance"], ls=":", color="grey", label="chance")
        ax.set_xticks(xs, labels)
        unit = DEFENCES[name].strength
        ax.set_xlabel(unit if name in unit else f"{unit} ({name})")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("student test accuracy")
    axes[0][-1].legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
