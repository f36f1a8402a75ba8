"""From a run's evaluations to its typed estimates: per estimator, the single models, each
arm's values over seeds with intervals, every declared comparison, the target's rank and the
crossover between the two targets' students."""

from __future__ import annotations

from typing import Any

from sublearn.analysis import stats
from sublearn.analysis.records import (
    ArmEstimate,
    Comparison,
    Crossover,
    EstimatorResults,
    Rank,
    Reference,
)
from sublearn.experiment.design import Design
from sublearn.stages.estimators import ESTIMATORS, Estimator

# The evaluation of each single model that `Reference` reports, by its field there.
REFERENCE_EVALS = {"base": "base", "cross_base": "cross_base", "teacher": "teacher_teacher",
                   "other_teacher": "other_teacher"}


def analyse(seeds: list[int], target: str, evals: dict[str, Any], design: Design,
            other: str | None = None) -> dict[str, EstimatorResults]:
    """Per estimator that every model has a value of: its statistics (`estimator_results`)."""
    return {name: estimator_results(ESTIMATORS[name], seeds, target, evals, design, other)
            for name in evals["base"]
            if name in ESTIMATORS and not undefined(evals, name, target)}


def estimator_results(est: Estimator, seeds: list[int], target: str, evals: dict[str, Any],
                      design: Design, other: str | None) -> EstimatorResults:
    """The single models, per-seed values and intervals per arm, every declared comparison
    (Welch, and paired: arms with the same student seed share its initialisation, subsample
    and data order), the target's rank (a ranked estimator's) and the crossover between the
    two targets' students (an estimator with a value per option)."""

    def value(ev: dict[str, Any]) -> float:
        return est.value(ev[est.name], target)

    arms = {a: ArmEstimate.of([value(evals[f"{a}/s{s}"]) for s in seeds]) for a in design.arms}
    return EstimatorResults(
        reference=Reference(**{field: value(evals[k])
                               for field, k in REFERENCE_EVALS.items() if k in evals}),
        arms=arms,
        comparisons=[Comparison.of(arms, c.a, c.b, c.meaning) for c in design.comparisons],
        target_rank=(target_rank(seeds, evals, target, est.name)
                     if est.shape == "ranked" and "control" in design.arms else None),
        # A single-valued estimator (multiple choice scores the target's letter only,
        # misalignment no option at all) has nothing to cross over.
        crossover=(crossover(seeds, evals, target, other, est.name)
                   if other and "other_target" in design.arms and est.shape != "single"
                   else None))


def undefined(evals: dict[str, Any], est: str, target: str) -> list[str]:
    """The models whose value of the estimator is undefined (a misalignment rate with no
    answer both coherent and judged): the estimator is left out of the statistics then,
    never filled in."""
    read = ESTIMATORS[est].value
    return [k for k, ev in evals.items() if read(ev[est], target) is None]


def target_rank(seeds: list[int], evals: dict[str, Any], target: str, est: str) -> Rank:
    """Which option moved most from control to treated? Rank 1 means the target did."""
    move = {o: sum(evals[f"treated/s{s}"][est]["per_option"][o]
                   - evals[f"control/s{s}"][est]["per_option"][o] for s in seeds) / len(seeds)
            for o in evals["base"][est]["per_option"]}
    return Rank(rank=stats.rank_of(target, move), of=len(move), movement=move)


def crossover(seeds: list[int], evals: dict[str, Any], target: str, other: str,
              est: str) -> Crossover:
    """Does each student move toward its own teacher's target? Per seed,
    (target student - other student) on P(target) + (other student - target student) on
    P(other): positive when both move their own way, whatever moves every student alike.
    With each target's rank among all options by how much its own students moved it."""
    per = {a: [evals[f"{a}/s{s}"][est]["per_option"] for s in seeds]
           for a in ("treated", "other_target")}
    values = [(t[target] - o[target]) + (o[other] - t[other])
              for t, o in zip(per["treated"], per["other_target"])]
    moves = {
        name: {opt: sum(mine[i][opt] - theirs[i][opt] for i in range(len(seeds))) / len(seeds)
               for opt in per["treated"][0]}
        for name, mine, theirs in ((target, per["treated"], per["other_target"]),
                                   (other, per["other_target"], per["treated"]))}
    return Crossover(values=values, interval=stats.mean_ci(values),
                     ranks={name: Rank(rank=stats.rank_of(name, m), of=len(m))
                            for name, m in moves.items()})
