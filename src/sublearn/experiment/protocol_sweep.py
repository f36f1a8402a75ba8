"""`sublearn sweep`: the protocol experiment as a kind of sweep (`sweep.Kind`), and the plan of
a config file's grid. A unit is one student (arm, seed); datasets and teachers that a point's
students share are artifacts in the store, built once under the store's per-artifact lock by
the first task that needs them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sublearn.analysis.records import Results, unit_differences
from sublearn.analysis.results import estimator_label, summary_table
from sublearn.errors import SublearnError, first_field_error
from sublearn.experiment.artifacts import STAGE_VERSIONS
from sublearn.experiment.config import ExperimentConfig, SweepConfig, read_toml
from sublearn.experiment.pipeline import Experiment
from sublearn.experiment.sweep import (
    Outcome,
    Plan,
    PointResult,
    Summary,
    Unit,
    effect_plot,
    execute,
    expand,
    parse_grid,
)
from sublearn.stages.estimators import ESTIMATORS

MAIN_EFFECT = ("treated", "control")


@dataclass(frozen=True)
class ProtocolKind:
    """`sublearn sweep`: a unit is one student, (arm, seed) -> `Experiment.run_unit`, which
    trains and evaluates it; finishing a point is its `Experiment.run()`, which finds every
    stage cached and writes results.json."""

    estimator: str | None = None  # the table's; None: exact_heldout where every point has it
    # Where the points' content-keyed artifacts live (`Experiment`'s `store`); None: each
    # point's own folder. Absolute, so Ray workers elsewhere find the same one.
    store: Path | None = None

    name = "experiment"
    version = STAGE_VERSIONS

    def config(self, raw: dict[str, Any], name: str) -> ExperimentConfig:
        return ExperimentConfig.model_validate({**raw, "name": name})

    def units(self, config: ExperimentConfig) -> list[Unit]:
        return list(Experiment(config, progress=False, store=self.store).units())

    def unit_label(self, unit: Unit) -> str:
        arm, seed = unit
        return f"{arm}-s{seed}"

    # A point's run folder is <root>/<its config's name>: `config` set the name to the point's.
    def run_unit(self, config: ExperimentConfig, run_dir: Path, unit: Unit) -> None:
        Experiment(config, run_dir.parent, progress=False, store=self.store).run_unit(*unit)

    def finish(self, config: ExperimentConfig, run_dir: Path) -> Results:
        return Experiment(config, run_dir.parent, progress=False, store=self.store).run()

    def summarise(self, points: list[PointResult], out: Path) -> Summary:
        results: dict[str, Results] = {r.point.name: r.results for r in points}
        est = self.estimator or ("exact_heldout" if all(
            "exact_heldout" in r.estimates for r in results.values()) else "exact")
        effects = {}
        for name, r in results.items():
            e = r.estimates.get(est)
            c = e.comparison(*MAIN_EFFECT) if e else None
            if c:
                effects[name] = (c.welch.diff, unit_differences(e.arms, c))
        # The table's seconds: the point's tasks, summed over workers, plus its aggregation.
        timed = {r.point.name: r.results.model_copy(
            update={"seconds": r.results.seconds + r.seconds}) for r in points}
        return Summary(
            table=summary_table(timed, est),
            note=(f"Estimator: {estimator_label(est, ESTIMATORS)}. Cells: mean difference "
                  "with its 95% Welch interval over student seeds (* = excludes 0). seconds: "
                  "the point's task times summed over workers, plus its aggregation."),
            plot=effect_plot(out / "sweep.png", effects,
                             title=f"treated − control, {estimator_label(est, ESTIMATORS)}",
                             ylabel="difference in P(target)"))


def plan(source: str | Path, grid_entries: Sequence[str] = (), address: str | None = None,
         estimator: str | None = None) -> Plan:
    """The protocol experiment's sweep of a config file: `--grid` entries override or extend
    the file's `[sweep] grid`; every point is validated now."""
    raw = read_toml(Path(source))
    try:
        table = SweepConfig.model_validate(raw.pop("sweep", {}))
    except ValidationError as e:
        where, msg = first_field_error(e)
        raise SublearnError(f"{source}: field sweep.{where}: {msg}") from None
    grid = {**table.grid, **parse_grid(grid_entries)}
    config_name = raw.get("name", ExperimentConfig.model_fields["name"].default)
    return expand(ProtocolKind(estimator), str(source), raw, grid, config_name,
                  address or table.address)


def run_sweep(source: str | Path, grid_entries: Sequence[str] = (), root: str | Path = "runs",
              address: str | None = None, workers: int | None = None, sequential: bool = False,
              estimator: str | None = None, quiet: bool = False) -> Outcome:
    """`sublearn sweep`: plan the config file's grid, run it, and aggregate into
    `<root>/<sweep name>`."""
    return execute(plan(source, grid_entries, address, estimator), root, None, workers,
                   sequential, quiet)
