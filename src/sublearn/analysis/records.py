"""The typed results of experiments: what results.json and sweep.json hold, and the only code
that writes or reads them.

An experiment measures each arm under one or more *estimators* (exact P(target), a sampled
rate, a judge's misalignment rate, a loss on neutral data, ...), one value per unit (a student
seed; one model of the toy's population). `EstimatorResults` is everything one estimator
measured, and `Results.estimates` holds one per estimator by name: a new estimator is one more
entry, which every table, plot and page already reads.

Files carry a format number. A file of another format (those written before results were typed
have none) is refused with one line that names it and says how to rewrite it, never half-read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from sublearn.analysis.stats import Difference, Interval, difference, mean_ci, paired_difference
from sublearn.errors import SublearnError, field_error
from sublearn.store import read_json, write_text

FORMAT: Final = 2
RESULTS = "results.json"


class Frozen(BaseModel):
    """The base of every record part: strict (unknown fields refused), immutable, exact JSON."""

    # Infinity is written as such (the interval over a single value is infinite), not as null,
    # so every file reads back to the numbers that were written.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class ArmEstimate(Frozen):
    """One arm under one estimator: a value per unit and the t interval over them."""

    values: list[float]
    interval: Interval

    @classmethod
    def of(cls, values: Sequence[float]) -> ArmEstimate:
        return cls(values=list(values), interval=mean_ci(values))


class Comparison(Frozen):
    """a - b between two arms: Welch (the arms as independent groups), and paired unit by unit
    (arms whose i-th values share a unit: a student seed, or the toy's i-th teacher)."""

    a: str
    b: str
    meaning: str = ""
    welch: Difference
    paired: Difference

    @property
    def name(self) -> str:
        return f"{self.a} - {self.b}"

    @classmethod
    def of(cls, arms: Mapping[str, ArmEstimate], a: str, b: str, meaning: str = "",
           seed: int = 0) -> Comparison:
        va, vb = arms[a].values, arms[b].values
        return cls(a=a, b=b, meaning=meaning, welch=difference(va, vb, seed=seed),
                   paired=paired_difference(va, vb, seed=seed))


def unit_differences(arms: Mapping[str, ArmEstimate], c: Comparison) -> list[float]:
    """a - b unit by unit: the values the paired interval is taken over (a plot's dots)."""
    return [x - y for x, y in zip(arms[c.a].values, arms[c.b].values, strict=True)]


def find(comparisons: Sequence[Comparison], a: str, b: str) -> Comparison | None:
    return next((c for c in comparisons if (c.a, c.b) == (a, b)), None)


class Rank(Frozen):
    """An option's place among all options by how much it moved (1 = moved most)."""

    rank: int
    of: int
    movement: dict[str, float] = {}  # option -> its mean movement, where recorded


class Crossover(Frozen):
    """Per unit, (target student - other student) on P(target) + (other student - target
    student) on P(other), with each target's rank by how much its own students moved it."""

    values: list[float]
    interval: Interval
    ranks: dict[str, Rank]


class Reference(Frozen):
    """Single models measured beside the arms; None where the run has no such model."""

    base: float
    cross_base: float | None = None
    teacher: float | None = None
    other_teacher: float | None = None

    def measured(self) -> dict[str, float]:
        return {name: v for name, v in self if v is not None}


class EstimatorResults(Frozen):
    """Everything one estimator measured in one run."""

    reference: Reference
    arms: dict[str, ArmEstimate]
    comparisons: list[Comparison]
    target_rank: Rank | None = None  # the target among all options, treated vs control
    crossover: Crossover | None = None

    def comparison(self, a: str, b: str) -> Comparison | None:
        return find(self.comparisons, a, b)


class FilterCounts(Frozen):
    """What the filter kept of one dataset (stages.filters.FilterReport, as written)."""

    total: int
    kept: int
    kept_fraction: float
    rejected: dict[str, int]  # reason -> rows


class Channel(Frozen):
    """Per-token mean |log p| gaps on the neutral base's completions (stages.channel)."""

    rows: int
    tokens: int
    shift: float  # teacher vs base
    specificity: float  # teacher vs other-target teacher
    ratio: float  # specificity / shift


class Provenance(Frozen):
    """What made the numbers: code versions, when, and hashes of every input. The whole
    config is in manifest.json beside results.json; here is its hash."""

    # Built from a manifest, whose config and kind stay in manifest.json.
    model_config = ConfigDict(extra="ignore")

    sublearn_version: str
    python: str
    created_unix: float
    config_hash: str
    base_weights: dict[str, str]
    datasets: dict[str, str]
    stage_versions: dict[str, int]


class Record(Frozen):
    """A results file: a format number, then the fields, as indented JSON in field order."""

    format: Literal[2] = FORMAT
    rerun: ClassVar[str]  # how to rewrite a file of another format

    def write(self, path: str | Path) -> None:
        write_text(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> Self:
        raw = read_json(path)
        found = raw.get("format", 1) if isinstance(raw, dict) else None
        if not isinstance(found, int):
            raise SublearnError(f"{path}: not a sublearn results file")
        if found != FORMAT:
            who = "an older" if found < FORMAT else "a newer"
            raise SublearnError(f"{path}: written by {who} sublearn (results format {found}; "
                                f"this one reads format {FORMAT}): {cls.rerun}")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise SublearnError(field_error(e, str(path))) from None


class Results(Record):
    """One run of the protocol experiment (`sublearn run`): results.json in its run folder."""

    rerun: ClassVar[str] = ("rerun `sublearn run` on its config to rewrite it (every stage is "
                            "cached: only the statistics are recomputed)")

    kind: Literal["experiment"] = "experiment"
    target: str
    other: str  # the other-target teacher's target (specificity control, crossover)
    seeds: list[int]
    estimates: dict[str, EstimatorResults]  # estimator name -> its numbers, in run order
    filter: dict[str, FilterCounts]  # dataset -> what the filter kept
    channel: Channel | None = None
    seconds: float  # wall time over every invocation in the run folder
    provenance: Provenance

    @property
    def estimators(self) -> list[str]:
        return list(self.estimates)


# A sweep's points hold one kind of results: `Results` for the protocol experiment, the toy's
# `auxlogit.results.AuxLogitResults`; a reader names it, as in `SweepRecord[Results].read(path)`,
# so this layer need not know every kind of experiment that can be swept.
R = TypeVar("R", bound=Record)


class SweepPoint(Frozen, Generic[R]):
    name: str
    run_dir: str
    values: dict[str, Any]  # grid key -> this point's value
    seconds: float  # the point's task times, summed over workers
    results: R


class SweepRecord(Record, Generic[R]):
    """A sweep (sweep.json): the grid, the task counts and every point's results."""

    rerun: ClassVar[str] = "rerun the sweep to rewrite it (finished tasks are skipped)"

    name: str
    kind: str  # the kind of experiment swept
    source: str  # the config file, or the command line, the grid was set on
    grid: dict[str, list[Any]]
    tasks: int
    skipped: int  # tasks found finished and not rerun by the invocation that wrote this
    seconds: float  # wall time of that invocation
    points: list[SweepPoint[R]]


def load_run(run_dir: Path) -> Results:
    """A run folder's results, or one line saying why there are none."""
    if not run_dir.is_dir():
        raise SublearnError(f"{run_dir}: no such run folder")
    if not (run_dir / RESULTS).is_file():
        raise SublearnError(f"{run_dir}: no {RESULTS} (has `sublearn run` finished there?)")
    return Results.read(run_dir / RESULTS)


class _Elapsed(BaseModel):
    model_config = ConfigDict(extra="ignore")

    seconds: float = 0.0


def recorded_seconds(path: Path) -> float:
    """The wall time a results.json already records, whatever its format: a rerun that
    rewrites a file of an older format still adds to the hours that made its artifacts."""
    return _Elapsed.model_validate(read_json(path)).seconds if path.exists() else 0.0
