"""The literature's claims as data: each claim one TOML file, its conditions experiments.

A claim file is an experiment config (usually `extends` a shared organism) plus a `[claim]`
table: the claim's words, its source, the published figure and model, the statistic it is
judged by, and its conditions. A condition is the file's experiment with some fields set
(`set`, dotted keys as `--set` takes them) and what the claim predicts for it (`expect`):

- `transfer`: the statistic's interval over seeds lies above zero;
- `none`: the interval includes zero (no transfer detected; at 3 seeds a weak statement,
  so the table prints the share of the reference's effect that is left beside it);
- `below` / `above`: the paired difference to another condition (`than`, default the
  first) lies below / above zero, seed by seed (conditions share seeds, data and data order).

The first condition is the reference (the claim's "without the intervention"). A claim about
removing or changing a transfer (`requires_transfer`, the default) is judged on its other
conditions, and only when the reference shows transfer: without it, "no transfer after the
defence" would read noise as agreement, so the verdict says the claim cannot be judged. A
claim that predicts every condition's outcome itself (a pattern over LoRA ranks, say) sets
`requires_transfer = false` and is judged on all of its conditions.

Every condition of every claim is a point of one sweep (`experiment.sweep`), so students are
resumable tasks, on Ray when it is installed, and all points share one artifact store: the
conditions that differ only in the students train one set of teachers and datasets.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sublearn.analysis.records import EstimatorResults, Results
from sublearn.analysis.stats import Interval, mean_ci, paired_difference
from sublearn.errors import SublearnError, field_error, first_field_error, unknown
from sublearn.experiment.config import ExperimentConfig, read_toml, set_dotted
from sublearn.experiment.protocol_sweep import ProtocolKind
from sublearn.experiment.sweep import Outcome, Plan, Point, execute, slug
from sublearn.stages.estimators import ESTIMATORS

CROSSOVER = "crossover"
STATISTIC_FORM = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*-\s*([a-z][a-z0-9_]*)\s*$")


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Condition(_Table):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="short, file-name safe")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted field -> value, "
                                "over the claim file's experiment (as `--set` takes them)")
    expect: Literal["transfer", "none", "below", "above"] = "transfer"
    than: str | None = Field(None, description="below/above: the condition compared with; "
                             "default: the first (the reference)")
    statistic: str | None = Field(None, description="default: the claim's")
    label: str = Field("", description="how the table names it; default: its name")

    @model_validator(mode="after")
    def _than(self) -> Condition:
        if self.than is not None and self.expect not in ("below", "above"):
            raise ValueError(f"than: only expect = 'below' or 'above' compares with another "
                             f"condition, not {self.expect!r}")
        return self


class Claim(_Table):
    """`[claim]`: what was published and how sublearn checks it."""

    title: str
    source: str = Field(description="the paper (and version) the claim and figure are from")
    published: str = Field(description="the published figure, in words")
    published_model: str
    statistic: str = Field("treated - control", description="'a - b' of two arms (per seed), "
                           "or 'crossover'")
    estimator: str = "exact_heldout"
    untestable: str | None = Field(None, description="why it cannot be measured here; then "
                                   "no conditions")
    requires_transfer: bool = Field(True, description="the claim changes a transfer the "
                                    "first condition shows: judged only when it does, and on "
                                    "the other conditions; false: every condition is a "
                                    "prediction of its own")
    notes: str = Field("", description="what differs from the published setting, and why")
    conditions: list[Condition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _conditions(self) -> Claim:
        if self.untestable:
            if self.conditions:
                raise ValueError("conditions: an untestable claim has none")
            return self
        if not self.conditions:
            raise ValueError("conditions: at least one (the first is the reference)")
        if self.requires_transfer and (self.conditions[0].expect != "transfer"
                                       or len(self.conditions) < 2):
            raise ValueError("conditions: with requires_transfer, the first condition is the "
                             "reference (expect = 'transfer') and at least one other follows")
        names = [c.name for c in self.conditions]
        if len(set(names)) != len(names):
            raise ValueError(f"conditions: names must be distinct, got {names}")
        for c in self.conditions:
            if c.than is not None and c.than not in names:
                raise ValueError(f"conditions: {c.name}: than {c.than!r} is not a condition "
                                 f"({', '.join(names)})")
            if c.expect in ("below", "above") and (c.than or names[0]) == c.name:
                raise ValueError(f"conditions: {c.name}: compared with itself (set `than`)")
        return self


@dataclass(frozen=True)
class ClaimSpec:
    """A loaded claim: its table and each condition's validated experiment."""

    name: str  # the file's stem
    path: Path
    claim: Claim
    configs: dict[str, ExperimentConfig]  # condition -> its experiment (named for its folder)

    def statistic(self, condition: Condition) -> str:
        return condition.statistic or self.claim.statistic


def _arms_of(stat: str) -> tuple[str, str] | None:
    m = STATISTIC_FORM.match(stat)
    return (m.group(1), m.group(2)) if m else None


def _check_statistic(stat: str, cfg: ExperimentConfig) -> None:
    arms = cfg.design().arms
    if stat == CROSSOVER:
        missing = [a for a in ("treated", "other_target") if a not in arms]
        if missing:
            raise ValueError(f"statistic crossover needs the arms treated and other_target "
                             f"(controls.other_target = true); missing {', '.join(missing)}")
        return
    pair = _arms_of(stat)
    if pair is None:
        raise ValueError(f"statistic {stat!r}: expected 'a - b' (two arm names) or "
                         f"'{CROSSOVER}'")
    unknown_arms = [a for a in pair if a not in arms]
    if unknown_arms:
        raise ValueError(f"statistic {stat!r}: no arm {unknown_arms[0]!r} in this experiment "
                         f"(arms: {', '.join(arms)})")


def _check_estimator(name: str, cfg: ExperimentConfig) -> None:
    """The estimator must be one the experiment turns on (an error now, not after the runs)."""
    if name not in ESTIMATORS:
        raise ValueError(unknown("estimator", name, ESTIMATORS))
    setting = ESTIMATORS[name].setting
    if setting is not None and not getattr(cfg.evaluation, setting.name):
        raise ValueError(f"estimator {name}: evaluation.{setting.name} is off")
    if name == "exact_heldout" and not cfg.evaluation.heldout:
        raise ValueError("estimator exact_heldout: evaluation.heldout is off")


def load_claim(path: str | Path) -> ClaimSpec:
    """Read a claim file; every condition's experiment is validated now, so a bad key fails
    before any training. Errors name the file and the field."""
    p = Path(path)
    raw = read_toml(p)
    table = raw.pop("claim", None)
    if not isinstance(table, dict):
        raise SublearnError(f"{p}: no [claim] table (a claim file is an experiment config "
                            "plus [claim]; see configs/claims/)")
    try:
        claim = Claim.model_validate(table)
    except ValidationError as e:
        where, msg = first_field_error(e)
        raise SublearnError(f"{p}: field claim{'.' + where if where else ''}: {msg}") from None
    configs: dict[str, ExperimentConfig] = {}
    for i, cond in enumerate(claim.conditions):
        where = f"claim.conditions[{i}] ({cond.name})"
        point = copy.deepcopy(raw)
        for key, value in cond.set.items():
            if key.split(".")[0] in ("name", "claim"):
                raise SublearnError(f"{p}: {where}: set {key}: cannot be set by a condition")
            try:
                set_dotted(point, key, copy.deepcopy(value))
            except SublearnError as e:
                raise SublearnError(f"{p}: {where}: set {key}: {e}") from None
        point["name"] = slug(f"{p.stem}-{cond.name}")
        try:
            cfg = ExperimentConfig.model_validate(point)
            _check_statistic(cond.statistic or claim.statistic, cfg)
            _check_estimator(claim.estimator, cfg)
        except ValidationError as e:
            raise SublearnError(field_error(e, f"{p}: {where}")) from None
        except ValueError as e:
            raise SublearnError(f"{p}: {where}: {e}") from None
        configs[cond.name] = cfg
    seeds = {tuple(c.seeds) for c in configs.values()}
    if len(seeds) > 1:
        raise SublearnError(f"{p}: conditions must share seeds (they are compared seed by "
                            f"seed), got {sorted(seeds)}")
    return ClaimSpec(p.stem, p, claim, configs)


def claim_files(folder: str | Path) -> list[Path]:
    """The claim files of a folder: every .toml except shared bases (names starting '_')."""
    return sorted(f for f in Path(folder).glob("*.toml") if not f.name.startswith("_"))


def select(folder: str | Path, names: Sequence[str] = ()) -> list[ClaimSpec]:
    files = {f.stem: f for f in claim_files(folder)}
    if not files:
        raise SublearnError(f"{folder}: no claim files (*.toml)")
    unknown_names = [n for n in names if n not in files]
    if unknown_names:
        raise SublearnError(f"unknown claim {unknown_names[0]!r}; choose one of: "
                            f"{', '.join(files)}")
    return [load_claim(files[n]) for n in (names or list(files))]


# --- running ---------------------------------------------------------------------------------
def plan(claims: Sequence[ClaimSpec], store: Path, estimator: str | None = None,
         address: str | None = None) -> Plan:
    """One sweep over every condition of `claims`, sharing the artifact store `store`."""
    points = [Point(cfg.name, {"claim": spec.name, "condition": cond}, cfg)
              for spec in claims if not spec.claim.untestable
              for cond, cfg in spec.configs.items()]
    source = str(claims[0].path.parent) if claims else "claims"
    return Plan(ProtocolKind(estimator, store.resolve()), "claims", source,
                {"claim": [s.name for s in claims]}, points, address)


def run(claims: Sequence[ClaimSpec], root: str | Path, address: str | None = None,
        workers: int | None = None, sequential: bool = False, quiet: bool = False
        ) -> Outcome | None:
    """Run (or find cached) every condition; None when every claim is untestable."""
    root = Path(root)
    p = plan(claims, root / "store", address=address)
    if not p.points:
        return None
    return execute(p, root, root / "sweep", workers, sequential, quiet)


# --- judging ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measured:
    """One condition's figure: the statistic per seed, its interval, and, for a relative
    expectation, the paired difference to the condition it is compared with."""

    condition: Condition
    statistic: str
    values: list[float]
    interval: Interval
    versus: Interval | None  # this - `than`, seed by seed
    share: float | None  # this condition's mean over the reference's
    met: bool
    seconds: float


def statistic_values(est: EstimatorResults, stat: str) -> list[float]:
    if stat == CROSSOVER:
        if est.crossover is None:
            raise SublearnError("the results hold no crossover (no other_target arm)")
        return list(est.crossover.values)
    pair = _arms_of(stat)
    if pair is None or pair[0] not in est.arms or pair[1] not in est.arms:
        raise SublearnError(f"statistic {stat!r}: the results hold arms "
                            f"{', '.join(est.arms)}")
    a, b = (est.arms[x].values for x in pair)
    return [x - y for x, y in zip(a, b, strict=True)]


def measure(spec: ClaimSpec, results: dict[str, Results], seconds: dict[str, float]
            ) -> list[Measured]:
    """Each condition's figure and whether it meets the claim's expectation."""
    est = spec.claim.estimator
    values: dict[str, list[float]] = {}
    for cond in spec.claim.conditions:
        r = results[spec.configs[cond.name].name]
        if est not in r.estimates:
            raise SublearnError(f"{spec.path}: estimator {est!r} is not in the results of "
                                f"{cond.name} (has {', '.join(r.estimates)})")
        values[cond.name] = statistic_values(r.estimates[est], spec.statistic(cond))
    ref = spec.claim.conditions[0].name
    out = []
    for cond in spec.claim.conditions:
        v = values[cond.name]
        iv = mean_ci(v)
        versus = None
        if cond.expect in ("below", "above"):
            versus = paired_difference(v, values[cond.than or ref]).diff
        met = {"transfer": iv.low > 0, "none": iv.low <= 0 <= iv.high,
               "below": versus is not None and versus.high < 0,
               "above": versus is not None and versus.low > 0}[cond.expect]
        ref_mean = mean_ci(values[ref]).mean
        share = iv.mean / ref_mean if cond.name != ref and ref_mean > 0 else None
        out.append(Measured(cond, spec.statistic(cond), v, iv, versus, share, met,
                            seconds.get(spec.configs[cond.name].name, 0.0)))
    return out


Verdict = Literal["holds", "partly holds", "does not hold", "not testable here"]


def verdict(spec: ClaimSpec, measured: Sequence[Measured]) -> tuple[Verdict, str]:
    """The claim's verdict and a sentence saying why (the module doc gives the rule)."""
    if spec.claim.untestable:
        return "not testable here", spec.claim.untestable
    judged = list(measured)
    if spec.claim.requires_transfer:
        ref, judged = judged[0], judged[1:]
        if not ref.met:
            return "not testable here", (f"the reference condition ({ref.condition.name}) "
                                         "shows no transfer at this scale, so there is nothing "
                                         "to remove or change")
    failed = [m.condition.name for m in judged if not m.met]
    if not failed:
        return "holds", "every condition as the claim predicts"
    if len(failed) == len(judged):
        return "does not hold", f"not as predicted: {', '.join(failed)}"
    return "partly holds", f"not as predicted: {', '.join(failed)}"
