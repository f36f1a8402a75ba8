"""Sweeps: a grid of experiments, run as independent tasks on Ray or in this process.

One mechanism serves every kind of experiment. A *point* is one combination of the grid's
values: the base config with those fields set, validated before any work, run in its own
folder `<root>/<point name>`. A *task* is one unit of a point's work, run wherever a worker
is free; a finished task leaves a marker, so a rerun skips it. After the tasks, each point is
finished (its results gathered; everything is cached, so this is cheap) and the sweep writes
`sweep.md` (one row per point), `sweep.json` (every point's typed results) and `sweep.png`.

What a config, a unit and a result are is the `Kind`'s business:
- `protocol_sweep.ProtocolKind` (`sublearn sweep`): a unit is one student (arm, seed); datasets
  and teachers that a point's students share are artifacts in the store, built once under
  the store's per-artifact lock by the first task that needs them.
- `auxlogit.experiment.AuxLogitKind` (`sublearn auxlogit --sweep`): a unit is a whole
  configuration, whose arms train together as one batched computation.

Ray is optional (`pip install 'sublearn[ray]'`) and imported only here, only when used.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sublearn.analysis.records import (
    Record,
    SweepPoint,
    SweepRecord,
)
from sublearn.analysis.report import bar_chart
from sublearn.analysis.stats import Interval
from sublearn.cores import usable_cores
from sublearn.errors import SublearnError, first_field_error
from sublearn.experiment.config import (
    parse_value,
    set_dotted,
)
from sublearn.store import read_json, stable_hash, write_json, write_text

# Fields a grid may not set: a point's name is derived from its values, and a point is not
# itself a sweep.
RESERVED = ("name", "sweep")

Unit = tuple[Any, ...]  # one task's share of a point, as its kind defines it


@dataclass(frozen=True)
class Point:
    name: str
    values: dict[str, Any]  # grid key -> this point's value
    config: Any  # the kind's validated config


@dataclass(frozen=True)
class PointResult:
    point: Point
    results: Record
    seconds: float  # the point's task times, summed over workers


@dataclass(frozen=True)
class Summary:
    """What a kind makes of a finished sweep: a markdown table, a line saying how to read
    it, and a plot (None when the points hold nothing to plot)."""

    table: str
    note: str
    plot: Path | None


class Kind(Protocol):
    """One kind of experiment, as the sweep mechanism sees it."""

    name: str
    # Bumped with any change to what a unit computes: a marker written by other code is
    # then not taken as finished.
    version: object

    def config(self, raw: dict[str, Any], name: str) -> BaseModel:
        """A point's config from its raw fields (raises ValidationError); `name` is the
        point's, for kinds whose config names its run folder."""

    def units(self, config: Any) -> list[Unit]:
        """A point's independent units of work, in the order they should run."""

    def unit_label(self, unit: Unit) -> str:
        """A file-name-safe label for a unit, unique within its point."""

    def run_unit(self, config: Any, run_dir: Path, unit: Unit) -> None:
        """Do one unit's work, in whichever process runs it."""

    def finish(self, config: Any, run_dir: Path) -> Record:
        """A point's results once its units are done (rebuilding anything missing)."""

    def summarise(self, points: list[PointResult], out: Path) -> Summary:
        """The table and plot of the whole sweep; plots are written under `out`."""


@dataclass(frozen=True)
class Task:
    point: Point
    unit: Unit
    unit_label: str

    @property
    def label(self) -> str:
        return f"{self.point.name} {self.unit_label}"


@dataclass(frozen=True)
class Plan:
    """A validated sweep: every point's config is known good before any work starts."""

    kind: Kind
    name: str
    source: str  # where the grid came from: a config file, or a command line
    grid: dict[str, list[Any]]
    points: list[Point]
    address: str | None


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    dir: Path  # where sweep.md, sweep.json and sweep.png are
    table: str
    results: dict[str, Record]  # point name -> its results
    tasks: int
    skipped: int
    seconds: float
    plot: Path | None
    point_seconds: dict[str, float]  # point name -> its task times, summed over workers


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


def _grid_error(source: str, name: str, values: dict[str, Any], e: ValidationError) -> str:
    """Name the grid entry at fault when the failing field is (inside) a swept key."""
    loc, msg = first_field_error(e)
    for key, value in values.items():
        if loc == key or loc.startswith(key + ".") or key.startswith(loc + "."):
            return f"{source}: grid {key}={value!r}: field {loc}: {msg}"
    # A check of the whole config (loc empty): the point's values together are at fault.
    return f"{source}: grid point {name}: " + (f"field {loc}: {msg}" if loc else msg)


def _check_grid(source: str, grid: dict[str, list[Any]]) -> None:
    if not grid:
        raise SublearnError(f"{source}: nothing to sweep: give --grid key.path=v1,v2 or a "
                            "[sweep] grid table")
    for key, values in grid.items():
        if key.split(".")[0] in RESERVED:
            raise SublearnError(f"grid {key}: cannot be swept (point names are made from the "
                                "values; a point is not itself a sweep)")
        if not values or len({repr(v) for v in values}) != len(values):
            raise SublearnError(f"grid {key}: needs distinct values, got {values!r}")


def _point(kind: Kind, source: str, raw: dict[str, Any], config_name: str,
           values: dict[str, Any]) -> Point:
    """One point: the base fields with the point's values set over them, validated."""
    name = point_name(config_name, values)
    point_raw = copy.deepcopy(raw)
    for key, value in values.items():
        try:
            # A copy: one value object set into every point would be shared between them.
            set_dotted(point_raw, key, copy.deepcopy(value))
        except SublearnError as e:
            raise SublearnError(f"grid {key}: {e}") from None
    try:
        return Point(name, values, kind.config(point_raw, name))
    except ValidationError as e:
        raise SublearnError(_grid_error(source, name, values, e)) from None
    except SublearnError as e:
        raise SublearnError(f"{source}: grid point {name}: {e}") from None


def expand(kind: Kind, source: str, raw: dict[str, Any], grid: dict[str, list[Any]],
           config_name: str, address: str | None = None) -> Plan:
    """Every point of `grid` over the base fields `raw`, each validated, so a bad key or value
    fails now, not after hours of earlier points."""
    _check_grid(source, grid)
    points = [_point(kind, source, raw, config_name, dict(zip(grid, combo)))
              for combo in itertools.product(*grid.values())]
    names = [pt.name for pt in points]
    if len(set(names)) != len(names):
        raise SublearnError(f"grid: two points get the same run name ({names}); use values "
                            "that differ in letters or digits")
    sweep_name = slug(f"{config_name}-sweep-{'-'.join(_key_labels(list(grid)).values())}")
    return Plan(kind, sweep_name, source, grid, points, address)


def tasks(p: Plan) -> list[Task]:
    return [Task(pt, unit, p.kind.unit_label(unit)) for pt in p.points
            for unit in p.kind.units(pt.config)]


# --- running tasks ---------------------------------------------------------------------------
def marker_path(root: Path, kind: Kind, task: Task) -> Path:
    """Where a finished task is recorded, so a rerun skips it without starting a worker. The
    key is the point's whole config, the unit and the kind's version: a changed knob gives a
    new key. A marker is a shortcut, not the truth: finishing a point rebuilds anything its
    folder lacks (a model folder replaced in place)."""
    h = stable_hash([task.point.config.model_dump(mode="json"), *task.unit, kind.version])
    return root / task.point.name / "sweep-tasks" / f"{task.unit_label}-{h}.json"


def run_task(kind: Kind, config: Any, run_dir: Path, unit: Unit) -> float:
    """One task, in whichever process runs it; returns its wall time in seconds."""
    t0 = time.time()
    kind.run_unit(config, run_dir, unit)
    return time.time() - t0


def _ray_task(kind: Kind, config: Any, run_dir: Path, unit: Unit) -> float:
    import torch

    # One core per task: the tasks are the parallelism, and several tasks' OpenMP thread
    # pools on the same cores would spin against each other.
    torch.set_num_threads(1)
    return run_task(kind, config, run_dir, unit)


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


Done = tuple[Task, float | None, str | None]  # task, seconds, error


def _sequential(kind: Kind, todo: list[Task], root: Path) -> Iterator[Done]:
    for t in todo:
        try:
            yield t, run_task(kind, t.point.config, root / t.point.name, t.unit), None
        except Exception as e:  # noqa: BLE001 - one failed task must not stop the others
            yield t, None, f"{type(e).__name__}: {e}"


def _on_ray(kind: Kind, todo: list[Task], root: Path, address: str | None, workers: int
            ) -> Iterator[Done]:
    import ray

    with ray_session(address, workers):
        remote = ray.remote(num_cpus=1)(_ray_task)
        refs = {remote.remote(kind, t.point.config, root / t.point.name, t.unit): t
                for t in todo}
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


def run_tasks(kind: Kind, todo: list[Task], root: Path, use_ray: bool, address: str | None,
              workers: int, console: Console) -> list[str]:
    """Run tasks with a progress bar, recording each finished one; returns the failures."""
    failures = []
    finished = (_on_ray(kind, todo, root, address, workers) if use_ray
                else _sequential(kind, todo, root))
    with _progress(console) as bar:
        job = bar.add_task("tasks", total=len(todo))
        for t, seconds, error in finished:
            if error is None:
                write_json(marker_path(root, kind, t), {"seconds": round(seconds, 2)})
            else:
                failures.append(f"{t.label}: {error}")
                console.print(f"[red]failed[/] {t.label}: {error}")
            bar.update(job, advance=1, description=t.label)
    return failures


# --- aggregation -----------------------------------------------------------------------------
def _task_seconds(root: Path, kind: Kind, point_tasks: list[Task]) -> float:
    return sum(read_json(marker_path(root, kind, t))["seconds"] for t in point_tasks)


def effect_plot(path: Path, effects: Mapping[str, tuple[Interval, Sequence[float]]],
                title: str, ylabel: str) -> Path | None:
    """One bar per point: a difference with its interval, each unit's difference as a dot;
    None when no point has the difference."""
    if not effects:
        return None
    return bar_chart(path, {n: iv for n, (iv, _) in effects.items()}, title=title,
                     ylabel=ylabel, reference=0.0, reference_label="no effect",
                     points={n: dots for n, (_, dots) in effects.items()})


def _markdown(p: Plan, s: Summary, n_tasks: int, skipped: int, seconds: float) -> str:
    grid = "\n".join(f"- `{k}`: {', '.join(_value_text(v) for v in vs)}"
                     for k, vs in p.grid.items())
    return (f"# Sweep {p.name}\n\nConfig: `{p.source}`; {len(p.points)} points, {n_tasks} tasks "
            f"({skipped} skipped as already finished); wall time of this invocation "
            f"{seconds:.0f} s.\n\nGrid:\n\n{grid}\n\n{s.note}\n\n{s.table}\n")


def aggregate(p: Plan, root: Path, out: Path, all_tasks: list[Task], skipped: int,
              t0: float) -> Outcome:
    points = [PointResult(pt, p.kind.finish(pt.config, root / pt.name),
                          _task_seconds(root, p.kind, [t for t in all_tasks if t.point is pt]))
              for pt in p.points]
    summary = p.kind.summarise(points, out)
    seconds = time.time() - t0
    write_text(out / "sweep.md", _markdown(p, summary, len(all_tasks), skipped, seconds))
    # The record is typed by the kind's results, which every point shares.
    SweepRecord[type(points[0].results) if points else Record](
        name=p.name, kind=p.kind.name, source=p.source, grid=p.grid, tasks=len(all_tasks),
        skipped=skipped, seconds=round(seconds, 1),
        points=[SweepPoint(name=r.point.name, run_dir=str(root / r.point.name),
                           values=r.point.values, seconds=round(r.seconds, 2),
                           results=r.results) for r in points],
    ).write(out / "sweep.json")
    return Outcome(p, out, summary.table, {r.point.name: r.results for r in points},
                   len(all_tasks), skipped, seconds, summary.plot,
                   {r.point.name: r.seconds for r in points})


def execute(p: Plan, root: str | Path, out: str | Path | None = None,
            workers: int | None = None, sequential: bool = False,
            quiet: bool = False) -> Outcome:
    """Run every unfinished task of a plan (on Ray unless `sequential` or Ray is absent), then
    aggregate into `out` (default `<root>/<sweep name>`). Rerunning after an interruption
    skips the tasks already recorded as finished."""
    t0 = time.time()
    console = Console(stderr=True, quiet=quiet)
    # Absolute: Ray workers on other machines (or in other folders) must find the same store.
    root = Path(root).resolve()
    out = Path(out) if out is not None else root / p.name
    all_tasks = tasks(p)
    todo = [t for t in all_tasks if not marker_path(root, p.kind, t).exists()]
    skipped = len(all_tasks) - len(todo)
    use_ray = not sequential and find_spec("ray") is not None
    if p.address and not use_ray:
        raise SublearnError(f"--address {p.address}: needs Ray (pip install 'sublearn[ray]') "
                            "and no --sequential")
    how = ("on Ray " + (f"at {p.address}" if p.address else f"(local, {workers or usable_cores()}"
                        " workers)")) if use_ray else "one after another in this process"
    console.print(f"sweep {p.name}: {len(p.points)} points, {len(all_tasks)} tasks; "
                  f"{skipped} already finished (skipped); running {len(todo)} {how}")
    if not use_ray and not sequential:
        console.print("[dim]Ray is not installed (pip install 'sublearn[ray]' to run tasks "
                      "in parallel)[/]")
    if todo:
        failures = run_tasks(p.kind, todo, root, use_ray, p.address,
                             workers or usable_cores(), console)
        if failures:
            raise SublearnError(f"{len(failures)} of {len(todo)} tasks failed (listed above); "
                                "finished tasks are kept: rerun the same command to retry")
    return aggregate(p, root, out, all_tasks, skipped, t0)
