"""Run one configuration or a sweep over one knob; write results, manifest and plots.

Output folder layout (default `runs/auxlogit/<hash of the configuration>`):
  results.json   per-model accuracies, 95% intervals and comparisons, per arm (per sweep point)
  manifest.json  provenance: configuration, versions, data, wall time, files
  accuracy.png   bar chart of the arms (single run), or
  sweep.png      accuracy against the swept value, one line per arm (numeric knobs), plus
  <knob>=<value>.png  one bar chart per sweep point
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublearn.auxlogit.config import AuxLogitConfig
from sublearn.auxlogit.data import N_CLASSES, Dataset, load
from sublearn.auxlogit.train import (
    ARM_HELP,
    ARMS,
    DIFFERENT_INIT,
    SAME_INIT,
    SHUFFLED,
    UNTRAINED,
    Advance,
    resolve_precision,
    run_arms,
    total_epochs,
)
from sublearn.errors import SublearnError
from sublearn.report import bar_chart, interval_table, line_plot, print_table
from sublearn.stats import Interval, difference, mean_ci
from sublearn.store import MANIFEST, manifest, stable_hash, write_json

RESULTS = "results.json"
CHANCE = 1.0 / N_CLASSES
# Comparisons reported with every run: the effect and the controls it must beat.
COMPARISONS = {
    "same - different_init": (SAME_INIT, DIFFERENT_INIT),
    "same - untrained": (SAME_INIT, UNTRAINED),
    "same - shuffled": (SAME_INIT, SHUFFLED),
}


def parse_hidden(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(h) for h in text.replace("x", ",").split(",") if h.strip())
    except ValueError:
        raise SublearnError(f"hidden: {text!r} is not a list of widths like 256,256") from None


# Knobs a sweep may vary, with the parser for one value. hidden uses "x" between widths
# inside a sweep (hidden=64x64,256x256) because "," separates the sweep's values.
SWEEP_KNOBS: dict[str, Callable[[str], Any]] = {
    "m": int, "n_models": int, "teacher_epochs": int, "student_epochs": int,
    "batch_size": int, "noise_size": int, "seed": int,
    "teacher_lr": float, "student_lr": float, "student_beta2": float,
    "hidden": parse_hidden, "init": str, "noise": str, "loss": str, "distill": str,
    "precision": str,
}


def parse_sweep(spec: str) -> tuple[str, list[Any]]:
    """"m=2,3,10,30" -> ("m", [2, 3, 10, 30])."""
    knob, sep, values = spec.partition("=")
    knob = knob.strip().replace("-", "_")
    if not sep or not values.strip():
        raise SublearnError(f"--sweep: expected KNOB=V1,V2,... (e.g. m=2,3,10,30), got {spec!r}")
    if knob not in SWEEP_KNOBS:
        raise SublearnError(f"--sweep: cannot sweep {knob!r}; choose from {sorted(SWEEP_KNOBS)}")
    parser = SWEEP_KNOBS[knob]
    try:
        parsed = [parser(v.strip()) for v in values.split(",") if v.strip()]
    except ValueError:
        raise SublearnError(f"--sweep: {values!r} are not valid values for {knob}") from None
    if len(set(map(str, parsed))) != len(parsed):
        raise SublearnError(f"--sweep: repeated values in {values!r}")
    return knob, parsed


def summarise(cfg: AuxLogitConfig, acc: dict[str, list[float]]) -> dict[str, Any]:
    """Per-arm intervals and the comparisons, as plain JSON-able data."""
    arms = {
        arm: {
            "description": ARM_HELP[arm],
            "accuracy": [round(a, 6) for a in acc[arm]],
            "interval": mean_ci(acc[arm]).to_dict(),
        }
        for arm in ARMS
    }
    # `difference` treats the arms as independent groups; they share teachers and inits, so
    # read these as a guide to the size of the gap rather than as an exact paired test.
    comparisons = {
        name: difference(acc[a], acc[b], seed=cfg.seed).to_dict()
        for name, (a, b) in COMPARISONS.items()
    }
    return {"config": cfg.model_dump(), "chance": CHANCE, "arms": arms, "comparisons": comparisons}


def intervals(point: dict[str, Any]) -> dict[str, Interval]:
    return {arm: Interval(**v["interval"]) for arm, v in point["arms"].items()}


def print_point(title: str, point: dict[str, Any]) -> None:
    print_table(interval_table(
        f"{title}; chance {point['chance']:.2f}", intervals(point), value_name="test accuracy"
    ))
    diffs = {name: Interval(**c["diff"]) for name, c in point["comparisons"].items()}
    p_values = {
        name: {"p (Welch/perm.)": f"{c['welch_p']:.2g}/{c['permutation_p']:.2g}"}
        for name, c in point["comparisons"].items()
    }
    print_table(interval_table(
        "same-init student minus each control", diffs, value_name="difference", extra=p_values
    ))


@contextmanager
def progress(enabled: bool, total: int) -> Iterator[Advance | None]:
    """A rich progress bar over epochs, or a no-op callback when quiet."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(),
        "{task.completed:.0f}/{task.total:.0f} epochs", TimeElapsedColumn(), TimeRemainingColumn(), transient=True,
    ) as bar:
        task = bar.add_task("auxlogit", total=total)
        yield lambda n: bar.advance(task, n)


def default_out(cfg: AuxLogitConfig, sweep: tuple[str, list[Any]] | None = None) -> Path:
    key: dict[str, Any] = {"config": cfg.model_dump()}
    if sweep:
        key["sweep"] = {"knob": sweep[0], "values": sweep[1]}
    return Path("runs") / "auxlogit" / stable_hash(key)


def provenance(
    cfg: AuxLogitConfig, data: Dataset, wall_s: float, files: Sequence[str], workers: int,
    **extra: Any,
) -> dict[str, Any]:
    return manifest(
        "auxlogit", cfg.model_dump(), data=data.describe(), wall_s=round(wall_s, 2),
        torch=torch.__version__, numpy=np.__version__, platform=platform.platform(),
        threads=torch.get_num_threads(), workers=workers, precision=resolve_precision(cfg),
        files=list(files), **extra,
    )


def run(
    cfg: AuxLogitConfig,
    out: str | Path | None = None,
    show: bool = True,
    data: Dataset | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """All arms of one configuration, the population split over `workers` threads (the
    results do not depend on it). Returns the results that were written to `out`."""
    if data is None:
        data = load(cfg.dataset, cfg.mnist_path)
    out = Path(out) if out else default_out(cfg)
    start = time.perf_counter()
    with progress(show, total_epochs(cfg)) as advance:
        acc = run_arms(cfg, data, advance, workers)
    wall_s = time.perf_counter() - start
    results = {"kind": "auxlogit", "data": data.describe(), "wall_s": round(wall_s, 2),
               **summarise(cfg, acc)}
    write_json(out / RESULTS, results)
    bar_chart(
        out / "accuracy.png", intervals(results), reference=CHANCE, points=acc,
        title=f"Auxiliary-logit transfer on {data.name} (m={cfg.m}, {cfg.n_models} models)",
        ylabel="test accuracy",
    )
    write_json(out / MANIFEST, provenance(cfg, data, wall_s, [RESULTS, "accuracy.png"], workers))
    if show:
        print_point(f"auxlogit on {data.name}: {cfg.n_models} models, {wall_s:.0f} s", results)
        print(f"wrote {out}")
    return results


def sweep(
    cfg: AuxLogitConfig,
    knob: str,
    values: Sequence[Any],
    out: str | Path | None = None,
    show: bool = True,
    data: Dataset | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """One full run per value of `knob`; every point is validated before any training."""
    configs = [cfg.replace(**{knob: v}) for v in values]
    if data is None:
        data = load(cfg.dataset, cfg.mnist_path)
    out = Path(out) if out else default_out(cfg, (knob, list(values)))
    labels = [_label(v) for v in values]
    points, files = [], [RESULTS]
    start = time.perf_counter()
    with progress(show, sum(total_epochs(c) for c in configs)) as advance:
        for c, label in zip(configs, labels, strict=True):
            t0 = time.perf_counter()
            acc = run_arms(c, data, advance, workers)
            point = {"value": label, "wall_s": round(time.perf_counter() - t0, 2),
                     **summarise(c, acc)}
            points.append(point)
            name = f"{knob}={label}.png"
            bar_chart(
                out / name, intervals(point), reference=CHANCE, points=acc,
                title=f"{knob} = {label} on {data.name}", ylabel="test accuracy",
            )
            files.append(name)
    wall_s = time.perf_counter() - start
    results = {"kind": "auxlogit-sweep", "knob": knob, "values": labels, "data": data.describe(),
               "wall_s": round(wall_s, 2), "points": points}
    write_json(out / RESULTS, results)
    if all(isinstance(v, int | float) for v in values):
        xs = [float(v) for v in values]
        line_plot(
            out / "sweep.png", xs,
            {arm: [intervals(p)[arm] for p in points] for arm in ARMS},
            title=f"Auxiliary-logit transfer on {data.name} against {knob}",
            xlabel=knob, ylabel="test accuracy",
            logx=min(xs) > 0 and max(xs) / min(xs) >= 10,
        )
        files.append("sweep.png")
    write_json(out / MANIFEST, provenance(
        cfg, data, wall_s, files, workers, sweep={"knob": knob, "values": labels}
    ))
    if show:
        for p in points:
            print_point(f"{knob} = {p['value']} ({p['wall_s']:.0f} s)", p)
        print(f"wrote {out}")
    return results


def _label(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)
