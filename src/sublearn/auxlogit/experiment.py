"""Run one configuration, or a sweep over one knob; write results, manifest and plots.

Output folder layout (default `runs/auxlogit/<hash of the configuration>`):
  results.json   per-model accuracies, 95% intervals and comparisons per arm (AuxLogitResults)
  manifest.json  provenance: configuration, versions, data, wall time, files
  accuracy.png   bar chart of the arms
A sweep runs on the mechanism of `sublearn sweep` (`AuxLogitKind`): one such folder per value,
`<out>/auxlogit-<knob>-<value>/`, resumable (a rerun skips the finished points), and beside
them
  sweep.md       one row per point: each arm's mean accuracy and the differences
  sweep.json     every point's results
  sweep.png      accuracy against the value, one line per arm (a numeric knob), or else
                 same-init minus different-init student per point
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sublearn.analysis.records import (
    RESULTS,
    ArmEstimate,
    Comparison,
    find,
    unit_differences,
)
from sublearn.analysis.report import bar_chart, interval_table, line_plot, print_table
from sublearn.analysis.results import diff_cell, differences_table
from sublearn.auxlogit.config import AuxLogitConfig
from sublearn.auxlogit.data import N_CLASSES, Dataset, load
from sublearn.auxlogit.results import AuxLogitResults
from sublearn.auxlogit.train import (
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
from sublearn.errors import SublearnError, unknown
from sublearn.experiment.sweep import Outcome, PointResult, Summary, effect_plot, execute, expand
from sublearn.store import MANIFEST, manifest, stable_hash, write_json

CHANCE = 1.0 / N_CLASSES
# Comparisons reported with every run: the effect and the controls it must beat.
COMPARISONS = [
    (SAME_INIT, DIFFERENT_INIT, "the effect: the teacher's init against an independent one"),
    (SAME_INIT, UNTRAINED, "against a student of the untrained teacher (its own init)"),
    (SAME_INIT, SHUFFLED, "against a student of the shuffled-label teacher"),
]


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
        raise SublearnError("--sweep: " + unknown("knob", knob, sorted(SWEEP_KNOBS)))
    parser = SWEEP_KNOBS[knob]
    try:
        parsed = [parser(v.strip()) for v in values.split(",") if v.strip()]
    except ValueError:
        raise SublearnError(f"--sweep: {values!r} are not valid values for {knob}") from None
    if len(set(map(str, parsed))) != len(parsed):
        raise SublearnError(f"--sweep: repeated values in {values!r}")
    return knob, parsed


def summarise(cfg: AuxLogitConfig, acc: dict[str, list[float]], data: Dataset,
              wall_s: float) -> AuxLogitResults:
    """Per-arm intervals and the comparisons. Model i of every arm is tied to the i-th
    teacher initialisation (its teacher's init, its own, or both) and sees the same data
    stream, so the paired interval compares each model with its counterpart, beside Welch's
    for independent groups."""
    # 6 decimals still tell every count of correct test images apart (10,000 at most) and
    # drop float32's noise digits from results.json.
    arms = {arm: ArmEstimate.of([round(a, 6) for a in acc[arm]]) for arm in ARMS}
    return AuxLogitResults(
        config=cfg, data=data.describe(), wall_s=round(wall_s, 2), chance=CHANCE, arms=arms,
        comparisons=[Comparison.of(arms, a, b, meaning, seed=cfg.seed)
                     for a, b, meaning in COMPARISONS])


def print_point(title: str, r: AuxLogitResults) -> None:
    print_table(interval_table(
        f"{title}; chance {r.chance:.2f}", {arm: a.interval for arm, a in r.arms.items()},
        value_name="test accuracy"))
    # Rows are named by the control: every comparison is the same-init student minus one.
    print_table(differences_table(
        "same-init student minus each control (Welch, and paired by teacher)",
        {c.b: c for c in r.comparisons}, "same-init minus", digits=3))


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
) -> AuxLogitResults:
    """All arms of one configuration, the population split over `workers` threads (the
    results do not depend on it). Returns the results that were written to `out`."""
    if data is None:
        data = load(cfg.dataset, cfg.mnist_path)
    out = Path(out) if out else default_out(cfg)
    start = time.perf_counter()
    with progress(show, total_epochs(cfg)) as advance:
        acc = run_arms(cfg, data, advance, workers)
    wall_s = time.perf_counter() - start
    results = summarise(cfg, acc, data, wall_s)
    results.write(out / RESULTS)
    bar_chart(
        out / "accuracy.png", {arm: a.interval for arm, a in results.arms.items()},
        reference=CHANCE, points=acc,
        title=f"Auxiliary-logit transfer on {data.name} (m={cfg.m}, {cfg.n_models} models)",
        ylabel="test accuracy",
    )
    write_json(out / MANIFEST, provenance(cfg, data, wall_s, [RESULTS, "accuracy.png"], workers))
    if show:
        print_point(f"auxlogit on {data.name}: {cfg.n_models} models, {wall_s:.0f} s", results)
        print(f"wrote {out}")
    return results


@dataclass(frozen=True)
class AuxLogitKind:
    """The toy as a kind of experiment for `sublearn.experiment.sweep`: a point is one configuration and
    its one unit trains every arm, because the arms share their teachers and train together
    as one batched computation."""

    workers: int = 1  # threads sharing each point's models

    name = "auxlogit"
    version = 1  # bump when training changes what a configuration computes

    def config(self, raw: dict[str, Any], name: str) -> AuxLogitConfig:
        return AuxLogitConfig.model_validate(raw)

    def units(self, config: AuxLogitConfig) -> list[tuple[Any, ...]]:
        return [()]

    def unit_label(self, unit: tuple[Any, ...]) -> str:
        return "all-arms"

    def run_unit(self, config: AuxLogitConfig, run_dir: Path, unit: tuple[Any, ...]) -> None:
        run(config, run_dir, show=False, workers=self.workers)

    def finish(self, config: AuxLogitConfig, run_dir: Path) -> AuxLogitResults:
        """The point's results.json, or a fresh run where it is missing or from another
        configuration (a marker is a shortcut, not the truth)."""
        if (run_dir / RESULTS).exists():
            results = AuxLogitResults.read(run_dir / RESULTS)
            if results.config == config:
                return results
        return run(config, run_dir, show=False, workers=self.workers)

    def summarise(self, points: list[PointResult], out: Path) -> Summary:
        keys = list(points[0].point.values)
        head = ["point", *keys, *ARMS,
                *[f"minus {c.b}" for c in points[0].results.comparisons], "seconds"]
        rows = [[r.point.name, *(_label(v) for v in r.point.values.values()),
                 *(f"{r.results.arms[arm].interval.mean:.3f}" for arm in ARMS),
                 *(diff_cell(c.welch.diff) for c in r.results.comparisons),
                 f"{r.seconds:.0f}"] for r in points]
        table = "\n".join("| " + " | ".join(row) + " |"
                          for row in [head, ["---"] * len(head), *rows])
        data = points[0].results.data.name
        values = [r.point.values[keys[0]] for r in points]
        if len(keys) == 1 and all(isinstance(v, int | float) for v in values):
            xs = [float(v) for v in values]
            plot = line_plot(
                out / "sweep.png", xs,
                {arm: [r.results.arms[arm].interval for r in points] for arm in ARMS},
                title=f"Auxiliary-logit transfer on {data} against {keys[0]}",
                xlabel=keys[0], ylabel="test accuracy",
                logx=min(xs) > 0 and max(xs) / min(xs) >= 10)
        else:
            effects = {}
            for r in points:
                c = find(r.results.comparisons, SAME_INIT, DIFFERENT_INIT)
                if c:
                    effects[r.point.name] = (c.welch.diff, unit_differences(r.results.arms, c))
            plot = effect_plot(out / "sweep.png", effects,
                               title=f"same-init − different-init student on {data}",
                               ylabel="difference in test accuracy")
        return Summary(table, "Test accuracy: each arm's mean over its models; then the "
                       "same-init student minus each control, with its 95% Welch interval over "
                       "models (* = excludes 0). seconds: the point's training time.", plot)


def sweep(
    cfg: AuxLogitConfig,
    knob: str,
    values: Sequence[Any],
    out: str | Path | None = None,
    show: bool = True,
    workers: int = 1,
) -> Outcome:
    """One run per value of `knob`, as the points of a sweep: every point is validated before
    any training, each runs in its own folder under `out`, and a rerun skips the points
    already finished. The points run one after another: each already spreads its models
    over `workers` threads."""
    out = Path(out) if out else default_out(cfg, (knob, list(values)))
    p = expand(AuxLogitKind(workers), "sublearn auxlogit --sweep", cfg.model_dump(),
               {knob: list(values)}, "auxlogit")
    outcome = execute(p, out, out, sequential=True, quiet=not show)
    if show:
        for pt in p.points:
            print_point(f"{knob} = {_label(pt.values[knob])}", outcome.results[pt.name])
        print(f"wrote {out} (sweep.md: one row per point)")
    return outcome


def _label(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)
