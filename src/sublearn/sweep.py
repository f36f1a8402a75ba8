"""`sublearn sweep`: a grid of experiments, run as independent tasks on Ray or in this process.

A *point* is one combination of the grid's values: the config file with those fields set, in
its own run folder `<root>/<config name>-<key>-<value>...`. A *task* is one student of one
point, (point, arm, seed) -> `Experiment.run_unit`: it trains and evaluates that student. The
datasets and teachers a point's students share are artifacts in the store; the first task to
need one builds it under the store's per-artifact lock while the others wait, then read it.

After the tasks, each point's `Experiment.run()` finds everything cached and writes its
`results.json`; the sweep then writes `<root>/<sweep name>/` with `sweep.md` (one row per
point), `sweep.json` (per-point results) and `sweep.png` (treated - control per point).

Ray is optional (`pip install 'sublearn[ray]'`) and imported only here, only when used.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sublearn.config import (
    ExperimentConfig,
    SweepConfig,
    parse_value,
    read_toml,
    set_dotted,
)
from sublearn.errors import SublearnError
from sublearn.pipeline import STAGE_VERSIONS, Experiment
from sublearn.report import bar_chart
from sublearn.results import LABELS, summary_table
from sublearn.stats import Interval
from sublearn.store import read_json, stable_hash, write_json, write_text

MAIN_EFFECT = "treated - control"
# Fields a grid may not set: a point's name is derived from its values, and a point is not
# itself a sweep.
RESERVED = ("name", "sweep")


@dataclass(frozen=True)
class Point:
    name: str
    values: dict[str, Any]  # grid key -> this point's value
    config: ExperimentConfig


@dataclass(frozen=True)
class Task:
    point: Point
    arm: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.point.name} {self.arm} s{self.seed}"


@dataclass(frozen=True)
class Plan:
    """A validated sweep: every point's config is known good before any work starts."""

    name: str
    source: Path
    grid: dict[str, list[Any]]
    points: list[Point]
    address: str | None


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    dir: Path  # <root>/<sweep name>
    table: str
    results: dict[str, dict[str, Any]]  # point name -> its results.json
    tasks: int
    skipped: int
    seconds: float
    plot: Path | None


# --- the grid --------------------------------------------------------------------------------
def _split_values(text: str) -> list[str]:
    """Split `v1,v2,...` at commas outside brackets and quotes, so a value may be a TOML list
    (`filter.banned_numbers=[7,13],[]`) or a quoted string holding a comma."""
    pieces, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return [p.strip() for p in pieces]


def parse_grid(entries: Sequence[str]) -> dict[str, list[Any]]:
    """`--grid key.path=v1,v2` entries -> {key.path: [v1, v2]}, values read as TOML."""
    grid: dict[str, list[Any]] = {}
    for entry in entries:
        key, sep, text = entry.partition("=")
        pieces = _split_values(text)
        if not sep or not key.strip() or "" in pieces:
            raise SublearnError(f"--grid {entry!r}: expected key.path=v1,v2,... "
                                "(e.g. --grid trait.target=owl,cat)")
        grid[key.strip()] = [parse_value(p) for p in pieces]
    return grid


def slug(text: str) -> str:
    """A folder-name-safe, readable form: lower case, runs of other characters -> '-'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "x"


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "-".join(_value_text(v) for v in value) or "none"
    if isinstance(value, dict):
        return "-".join(f"{k}-{_value_text(v)}" for k, v in value.items())
    return str(value)


def _key_labels(keys: Sequence[str]) -> dict[str, str]:
    """Each key's last part names it in run names (`trait.target` -> `target`), unless two
    keys share that part (`student.seed`, `base.embedded.seed`): then the whole key does."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}


def point_name(config_name: str, values: dict[str, Any]) -> str:
    labels = _key_labels(list(values))
    parts = [config_name, *(f"{labels[k]}-{_value_text(v)}" for k, v in values.items())]
    return slug("-".join(parts))


def _grid_error(source: Path, name: str, values: dict[str, Any], e: ValidationError) -> str:
    """Name the grid entry at fault when the failing field is (inside) a swept key."""
    first = e.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    for key, value in values.items():
        if loc == key or loc.startswith(key + ".") or key.startswith(loc + "."):
            return f"{source}: grid {key}={value!r}: field {loc}: {first['msg']}"
    where = loc or "(top level)"
    return f"{source}: grid point {name}: field {where}: {first['msg']}"


def _grid(source: Path, table: SweepConfig, entries: Sequence[str]) -> dict[str, list[Any]]:
    """The file's grid with the command line's entries over it, checked."""
    grid = {**table.grid, **parse_grid(entries)}
    if not grid:
        raise SublearnError(f"{source}: nothing to sweep: give --grid key.path=v1,v2 or a "
                            "[sweep] grid table")
    for key, values in grid.items():
        if key.split(".")[0] in RESERVED:
            raise SublearnError(f"grid {key}: cannot be swept (point names are made from the "
                                "values; a point is not itself a sweep)")
        if not values or len({repr(v) for v in values}) != len(values):
            raise SublearnError(f"grid {key}: needs distinct values, got {values!r}")
    return grid


def _point(source: Path, raw: dict[str, Any], config_name: str, values: dict[str, Any]) -> Point:
    """One point: the file's fields with the point's values set over them, validated."""
    name = point_name(config_name, values)
    point_raw = copy.deepcopy(raw)
    point_raw["name"] = name
    for key, value in values.items():
        try:
            # A copy: one value object set into every point would be shared between them.
            set_dotted(point_raw, key, copy.deepcopy(value))
        except SublearnError as e:
            raise SublearnError(f"grid {key}: {e}") from None
    try:
        return Point(name, values, ExperimentConfig.model_validate(point_raw))
    except ValidationError as e:
        raise SublearnError(_grid_error(source, name, values, e)) from None
    except SublearnError as e:
        raise SublearnError(f"{source}: grid point {name}: {e}") from None


def plan(source: str | Path, grid_entries: Sequence[str] = (),
         address: str | None = None) -> Plan:
    """Expand the grid (`--grid` entries override or extend the file's `[sweep] grid`) and
    validate every point, so a bad key or value fails now, not after hours of earlier points."""
    source = Path(source)
    raw = read_toml(source)
    try:
        table = SweepConfig.model_validate(raw.pop("sweep", {}))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(["sweep", *(str(x) for x in first["loc"])])
        raise SublearnError(f"{source}: field {where}: {first['msg']}") from None
    grid = _grid(source, table, grid_entries)
    config_name = raw.get("name", ExperimentConfig.model_fields["name"].default)
    points = [_point(source, raw, config_name, dict(zip(grid, combo)))
              for combo in itertools.product(*grid.values())]
    names = [pt.name for pt in points]
    if len(set(names)) != len(names):
        raise SublearnError(f"grid: two points get the same run name ({names}); use values "
                            "that differ in letters or digits")
    sweep_name = slug(f"{config_name}-sweep-{'-'.join(_key_labels(list(grid)).values())}")
    return Plan(sweep_name, source, grid, points, address or table.address)


def tasks(p: Plan) -> list[Task]:
    return [Task(pt, arm, seed) for pt in p.points
            for arm, seed in Experiment(pt.config, progress=False).units()]


# --- running tasks ---------------------------------------------------------------------------
def marker_path(root: Path, task: Task) -> Path:
    """Where a finished task is recorded, so a rerun skips it without starting a worker. The
    key is the point's whole config, the arm, the seed and the stage versions: a changed knob
    gives a new key. A marker is a shortcut, not the truth: the aggregation's
    `Experiment.run()` rebuilds anything the store lacks (a model folder replaced in place)."""
    h = stable_hash([task.point.config.model_dump(mode="json"), task.arm, task.seed,
                     STAGE_VERSIONS])
    return root / task.point.name / "sweep-tasks" / f"{task.arm}-s{task.seed}-{h}.json"


def run_task(config: ExperimentConfig, root: str, arm: str, seed: int) -> float:
    """One task, in whichever process runs it; returns its wall time in seconds."""
    t0 = time.time()
    Experiment(config, root, progress=False).run_unit(arm, seed)
    return time.time() - t0


def _ray_task(config: ExperimentConfig, root: str, arm: str, seed: int) -> float:
    import torch

    # One core per task: the tasks are the parallelism, and several tasks' OpenMP thread
    # pools on the same cores would spin against each other.
    torch.set_num_threads(1)
    return run_task(config, root, arm, seed)


@contextmanager
def ray_session(address: str | None, workers: int) -> Iterator[None]:
    """A Ray connection for the sweep: a caller's own (a notebook, a test) is used and left
    running; else a local instance with `workers` CPUs, or the cluster at `address`."""
    import ray

    if ray.is_initialized():
        yield
        return
    where = {"address": address} if address else {"num_cpus": workers,
                                                  "include_dashboard": False}
    ray.init(**where, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


Finished = tuple[Task, float | None, str | None]  # task, seconds, error


def _sequential(todo: list[Task], root: Path) -> Iterator[Finished]:
    for t in todo:
        try:
            yield t, run_task(t.point.config, str(root), t.arm, t.seed), None
        except Exception as e:  # noqa: BLE001 - one failed task must not stop the others
            yield t, None, f"{type(e).__name__}: {e}"


def _on_ray(todo: list[Task], root: Path, address: str | None, workers: int
            ) -> Iterator[Finished]:
    import ray

    with ray_session(address, workers):
        remote = ray.remote(num_cpus=1)(_ray_task)
        refs = {remote.remote(t.point.config, str(root), t.arm, t.seed): t for t in todo}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                yield refs[done[0]], ray.get(done[0]), None
            except ray.exceptions.RayError as e:
                # A task error's text ends with the original exception's line.
                yield refs[done[0]], None, str(e).strip().splitlines()[-1]


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=console.quiet)


def run_tasks(todo: list[Task], root: Path, use_ray: bool, address: str | None, workers: int,
              console: Console) -> list[str]:
    """Run tasks with a progress bar, recording each finished one; returns the failures."""
    failures = []
    finished = (_on_ray(todo, root, address, workers) if use_ray else _sequential(todo, root))
    with _progress(console) as bar:
        job = bar.add_task("tasks", total=len(todo))
        for t, seconds, error in finished:
            if error is None:
                write_json(marker_path(root, t), {"seconds": round(seconds, 2)})
            else:
                failures.append(f"{t.label}: {error}")
                console.print(f"[red]failed[/] {t.label}: {error}")
            bar.update(job, advance=1, description=t.label)
    return failures


# --- aggregation -----------------------------------------------------------------------------
def _worker_seconds(root: Path, point_tasks: list[Task]) -> float:
    return sum(read_json(marker_path(root, t))["seconds"] for t in point_tasks)


def _point_summary(pt: Point, root: Path, r: dict[str, Any], estimator: str) -> dict[str, Any]:
    comps = {k: {"mean": d["diff"]["mean"], "low": d["diff"]["low"], "high": d["diff"]["high"],
                 "welch_p": d["welch_p"],
                 "paired": {k2: d["paired"][k2] for k2 in ("diff", "paired_p")}}
             for k, d in r["comparisons"][estimator].items()}
    return {"name": pt.name, "run_dir": str(root / pt.name), "values": pt.values,
            "seconds": r["seconds"], "reference": r["reference"][estimator],
            "comparisons": comps,
            "target_rank": r.get("target_rank", {}).get(estimator, {}).get("rank")}


def _effect_plot(path: Path, results: dict[str, dict[str, Any]], estimator: str) -> Path | None:
    """treated - control per point, with its Welch interval (the table's) and each seed's
    paired difference as a dot; None when no point has a neutral control."""
    rows: dict[str, Interval] = {}
    points: dict[str, list[float]] = {}
    for name, r in results.items():
        comp = r["comparisons"][estimator].get(MAIN_EFFECT)
        if comp is None:
            continue
        rows[name] = Interval(**comp["diff"])
        arms = r["arms"][estimator]
        points[name] = [t - c for t, c in zip(arms["treated"]["per_seed"],
                                              arms["control"]["per_seed"])]
    if not rows:
        return None
    return bar_chart(path, rows, title=f"treated − control, {LABELS.get(estimator, estimator)}",
                     ylabel="difference in P(target)", reference=0.0,
                     reference_label="no effect", points=points)


def _markdown(p: Plan, table: str, estimator: str, n_tasks: int, skipped: int,
              seconds: float) -> str:
    grid = "\n".join(f"- `{k}`: {', '.join(_value_text(v) for v in vs)}"
                     for k, vs in p.grid.items())
    return (f"# Sweep {p.name}\n\nConfig: `{p.source}`; {len(p.points)} points, {n_tasks} tasks "
            f"({skipped} skipped as already finished); wall time of this invocation "
            f"{seconds:.0f} s.\n\nGrid:\n\n{grid}\n\nEstimator: {LABELS.get(estimator, estimator)}."
            f" Cells: mean difference with its 95% Welch interval over student seeds "
            f"(* = excludes 0). seconds: the point's task times summed over workers, plus its "
            f"aggregation.\n\n{table}\n")


def aggregate(p: Plan, root: Path, all_tasks: list[Task], estimator: str | None,
              skipped: int, t0: float) -> Outcome:
    results: dict[str, dict[str, Any]] = {}
    for pt in p.points:
        r = Experiment(pt.config, root, progress=False).run()  # everything cached: cheap
        mine = [t for t in all_tasks if t.point is pt]
        results[pt.name] = {**r, "seconds": r["seconds"] + _worker_seconds(root, mine)}
    if estimator is None:
        heldout = all("exact_heldout" in r["estimators"] for r in results.values())
        estimator = "exact_heldout" if heldout else "exact"
    table = summary_table(results, estimator)
    out = root / p.name
    seconds = time.time() - t0
    write_text(out / "sweep.md", _markdown(p, table, estimator, len(all_tasks), skipped, seconds))
    write_json(out / "sweep.json", {
        "name": p.name, "config": str(p.source), "grid": p.grid, "estimator": estimator,
        "tasks": {"total": len(all_tasks), "skipped": skipped}, "seconds": round(seconds, 1),
        "points": [_point_summary(pt, root, results[pt.name], estimator) for pt in p.points]})
    plot = _effect_plot(out / "sweep.png", results, estimator)
    return Outcome(p, out, table, results, len(all_tasks), skipped, seconds, plot)


def run_sweep(source: str | Path, grid_entries: Sequence[str] = (), root: str | Path = "runs",
              address: str | None = None, workers: int | None = None, sequential: bool = False,
              estimator: str | None = None, quiet: bool = False) -> Outcome:
    """Plan, run every unfinished task (on Ray unless `sequential` or Ray is absent), then
    aggregate. Rerunning after an interruption skips the tasks already recorded as finished."""
    t0 = time.time()
    console = Console(stderr=True, quiet=quiet)
    p = plan(source, grid_entries, address)
    # Absolute: Ray workers on other machines (or in other folders) must find the same store.
    root = Path(root).resolve()
    all_tasks = tasks(p)
    todo = [t for t in all_tasks if not marker_path(root, t).exists()]
    skipped = len(all_tasks) - len(todo)
    use_ray = not sequential and find_spec("ray") is not None
    if p.address and not use_ray:
        raise SublearnError(f"--address {p.address}: needs Ray (pip install 'sublearn[ray]') "
                            "and no --sequential")
    how = ("on Ray " + (f"at {p.address}" if p.address else f"(local, {workers or os.cpu_count()}"
                        " workers)")) if use_ray else "one after another in this process"
    console.print(f"sweep {p.name}: {len(p.points)} points, {len(all_tasks)} tasks; "
                  f"{skipped} already finished (skipped); running {len(todo)} {how}")
    if not use_ray and not sequential:
        console.print("[dim]Ray is not installed (pip install 'sublearn[ray]' to run tasks "
                      "in parallel)[/]")
    if todo:
        failures = run_tasks(todo, root, use_ray, p.address, workers or os.cpu_count() or 1,
                             console)
        if failures:
            raise SublearnError(f"{len(failures)} of {len(todo)} tasks failed (listed above); "
                                "finished tasks are kept: rerun the same command to retry")
    return aggregate(p, root, all_tasks, estimator, skipped, t0)
