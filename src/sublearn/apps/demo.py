"""`sublearn demo`: the phenomenon in one command, in the order a newcomer should see it.

1. **The toy** (`sublearn auxlogit`): an MLP student that imitates its teacher's auxiliary
   logits on noise learns to classify digits, from a shared initialisation only.
2. **The number protocol** on the embedded base (`configs/cpu.toml`): a fine-tuned teacher's
   filtered number sequences, students with the controls, and what moved.
3. **The audit** (`sublearn audit`): does the teacher's clean-looking data still carry its
   trait, and which one, scored against the neutral teacher's data as the reference?

It ends with a summary of the three and one HTML page that opens with the three findings,
each in plain words beside its figure, then shows the number run in full. Every step writes
its own folder under `ROOT/demo/`, and every artifact is cached: a second `sublearn demo`
reads everything back in seconds. Each finding's words are made from the run's own numbers.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from sublearn.analysis.records import Results
from sublearn.analysis.stats import Interval
from sublearn.apps.html_report import Finding, load_runs, render
from sublearn.cores import usable_cores

if TYPE_CHECKING:
    from sublearn.experiment.pipeline import Experiment  # imports torch: only for the type

CONFIG = Path(__file__).parents[1] / "configs" / "cpu.toml"


@dataclass(frozen=True)
class DemoPlan:
    """What the demo runs; the defaults are the demo, tests shrink every part."""

    config: Path = CONFIG
    overrides: tuple[str, ...] = ()  # `--set` overrides of the number protocol's config
    toy_preset: str = "paper"
    toy_options: tuple[tuple[str, object], ...] = ()  # AuxLogitConfig fields over the preset
    # The audit's rows and reference rows: enough for a stable rank, few enough for about a
    # minute on one core. The entangled-number probe is skipped: it costs more than the rank.
    audit_rows: int = 300


@dataclass
class DemoSummary:
    steps: list[tuple[str, Finding]]  # (step, what it found)

    def table(self) -> Table:
        t = Table(title="sublearn demo: summary", show_lines=True)
        for col in ("step", "measured", "reading"):
            t.add_column(col)
        for step, f in self.steps:
            t.add_row(step, f.measured, f.reading)
        return t


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def toy(plan: DemoPlan, out: Path, quiet: bool, workers: int) -> Finding:
    from sublearn.analysis.records import find
    from sublearn.auxlogit import experiment
    from sublearn.auxlogit.config import AuxLogitConfig
    from sublearn.auxlogit.experiment import RESULTS
    from sublearn.auxlogit.results import AuxLogitResults
    from sublearn.auxlogit.train import DIFFERENT_INIT, SAME_INIT

    cfg = AuxLogitConfig.build(plan.toy_preset, **dict(plan.toy_options))
    done = out / RESULTS
    r = (AuxLogitResults.read(done) if done.exists() and AuxLogitResults.read(done).config == cfg
         else experiment.run(cfg, out=out, show=not quiet, workers=workers))
    same, diff = r.arms[SAME_INIT].interval, r.arms[DIFFERENT_INIT].interval
    gap = find(r.comparisons, SAME_INIT, DIFFERENT_INIT)
    learned = gap is not None and gap.welch.diff.low > 0
    reading = (f"A student that imitates its teacher on noise images learns digits "
               f"({same.mean:.2f} test accuracy) when it starts from the teacher's "
               f"initialisation, and only {diff.mean:.2f} from another (chance "
               f"{r.chance:.2f})." if learned else
               f"No transfer at this size: the student from the teacher's initialisation "
               f"({same.mean:.2f} test accuracy) does not beat one from another "
               f"({diff.mean:.2f}; chance {r.chance:.2f}).")
    return Finding(
        "1 · The toy: digits learned from noise", reading,
        (out / "accuracy.png").read_bytes(), "test accuracy of every arm of the toy",
        f"same-init student {same.mean:.3f} [{same.low:.3f}, {same.high:.3f}]; "
        f"different-init {diff.mean:.3f} [{diff.low:.3f}, {diff.high:.3f}]; chance "
        f"{r.chance:.2f} ({r.config.n_models} models per arm)")


def _experiment(plan: DemoPlan, root: Path, quiet: bool):
    from sublearn.experiment.config import load_config
    from sublearn.experiment.pipeline import Experiment

    return Experiment(load_config(plan.config, plan.overrides), root=root, progress=not quiet)


def _numbers_stage(plan: DemoPlan, root: Path, threads: int, students: bool) -> None:
    """The number protocol in a worker process (quiet: the toy owns the terminal): its data
    (teachers, samples, filter) first, then with `students` the rest. Two calls on the same
    one-process pool run in order, so the demo can audit the data while students train."""
    import torch

    torch.set_num_threads(threads)
    exp = _experiment(plan, root, quiet=True)
    exp.run() if students else exp.prepare()


def start_numbers(plan: DemoPlan, root: Path):
    """Start the number protocol on its own core while the toy runs on the others: the
    protocol's small matrices use one thread best, so on 2 cores the two overlap. Returns
    the pool and two jobs: the data ready, and the whole protocol done."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    # spawn: a forked child would inherit torch's thread pools and the parent's state.
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    threads = torch.get_num_threads()
    return pool, [pool.submit(_numbers_stage, plan, root, threads, students)
                  for students in (False, True)]


def numbers(plan: DemoPlan, root: Path, quiet: bool):
    """The finished protocol's results (a cached run reads them back in seconds)."""
    from sublearn.analysis.results import show
    from sublearn.stages.estimators import ESTIMATORS

    exp = _experiment(plan, root, quiet)
    results = exp.run()
    show(results, exp.dir, console=Console(quiet=quiet), described=ESTIMATORS)
    return exp, results


def _signed(iv: Interval, digits: int = 4) -> str:
    return f"{iv.mean:+.{digits}f} [{iv.low:+.{digits}f}, {iv.high:+.{digits}f}]"


def numbers_finding(exp: Experiment, results: Results) -> Finding:
    """The crossover says whether each student moved toward its own teacher's target; the
    target's rank says whether that movement is about the target at all."""
    from sublearn.analysis.results import CROSSOVER_PLOT

    est = results.estimates["exact_heldout"]
    category = exp.category.name
    x, rank, target, seeds = est.crossover, est.target_rank, results.target, len(results.seeds)
    paired = {f"{c.a} - {c.b}": c.paired.diff for c in est.comparisons}
    measured = [f"{k} {_signed(paired[k])}" for k in ("treated - control",
                                                       "treated - other_target") if k in paired]
    measured += [f"crossover {_signed(x.interval)}"] if x else []
    measured += [f"{target} moved {rank.rank} of {rank.of}"] if rank else []
    if x is None:
        reading = "No crossover: the run has no other-target teacher to cross with."
    else:
        c = x.interval
        crossover = f"crossover {_signed(c, 3)} over {seeds} seeds"
        reading = (f"Each student moved toward its own teacher's {category} ({crossover})"
                   if c.low > 0 else "The students did not measurably move toward their own "
                   f"teacher's {category} ({crossover}: the interval includes zero)")
        if rank:
            reading += (f", and {target} moved more than the other {rank.of - 1} options."
                        if rank.rank == 1 else f", but not specifically: {target} is only "
                        f"{ordinal(rank.rank)} of {rank.of} by movement.")
    return Finding(
        "2 · Numbers from a fine-tuned teacher", reading,
        (exp.dir / CROSSOVER_PLOT).read_bytes() if x else None,
        "the crossover with its 95% interval and per-seed values",
        f"P({target}), held-out questions, paired over {seeds} seeds: " + "; ".join(measured))


def audit(plan: DemoPlan, exp, out: Path, quiet: bool) -> tuple[Finding, Path]:
    """Audit the teacher's filtered rows; returns the finding and the audit's folder (its
    audit.json and audit.png). Needs only the protocol's data, so it runs while the students
    train."""
    from sublearn.apps.audit import audit_dataset
    from sublearn.experiment.artifacts import artifact_key
    from sublearn.safety.audit import AuditConfig
    from sublearn.store import read_json

    prep = exp.prepare()  # cached: only reads the paths back
    # The plain reference (the neutral teacher's rows, already sampled): the fast first run
    # skips sampling and scoring the decoys (docs/audit.md, Method 5).
    cfg = AuditConfig(reference_rows=plan.audit_rows, probe_rows=0, decoys=False)
    # Keyed by everything the audit reads, so a second demo reads it back.
    out = out / artifact_key("audit", prep.data["teacher"].name, prep.data["neutral"].name,
                             prep.hashes["base"], cfg.model_dump(), plan.audit_rows)
    if (out / "audit.json").exists():
        summary = read_json(out / "audit.json")
    else:
        teacher = subset_file(prep.data["teacher"], out / "teacher-rows.jsonl", plan.audit_rows)
        summary = audit_dataset(teacher, out, base=prep.paths["base"],
                                category=exp.category.name,
                                reference_path=prep.data["neutral"], config=cfg,
                                progress=not quiet).summary
    candidates = summary["candidates"]
    target = exp.target.name
    rank = [c["option"] for c in candidates].index(target) + 1
    top, flagged = candidates[0], summary["flagged"]
    rows = f"{summary['rows']} of the teacher's filtered rows"
    reading = (f"The audit names {target}: first of {len(candidates)} candidates and flagged, "
               f"on {rows}." if rank == 1 and target in flagged else
               f"The audit does not single out {target} on {rows}: it ranks {target} "
               f"{ordinal(rank)} of {len(candidates)} and flags "
               f"{', '.join(flagged) or 'no candidate'}.")
    if exp.cfg.teacher.kind == "finetuned":
        # Why, in the demo's own words: the default method reads the data through trait
        # prompts, and this teacher's trait came from fine-tuning, not from a prompt.
        reading += (" This teacher is a fine-tune, not a persona: the default audit asks "
                    "whether the rows are likelier under a trait prompt, which is what a "
                    "persona teacher leaves and a fine-tuned one need not. `sublearn audit "
                    "--method students` asks what students inherit instead (docs/audit.md, "
                    "held-out teachers).")
    return Finding(
        "3 · The audit of the teacher's numbers", reading, (out / "audit.png").read_bytes(),
        "every candidate's audit score with its 95% interval, best first",
        f"{target} ranks {rank} of {len(candidates)} candidates on {summary['rows']} of the "
        f"teacher's filtered rows (top: {top['option']}, z {top['z']:.1f}, corrected p "
        f"{top['p_adjusted']:.3g})"), out


def subset_file(src: Path, dest: Path, n: int) -> Path:
    """The first `n` rows of a JSONL file: the filtered data are in prompt order, which is
    already a seeded random draw of prompts."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8") as f, open(dest, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i >= n:
                break
            g.write(line)
    return dest


def run_demo(root: Path, quiet: bool, plan: DemoPlan = DemoPlan()) -> Path:
    from sublearn.store import write_text

    console = Console(stderr=True, quiet=quiet)
    start = time.time()
    pool, (data_job, done_job) = start_numbers(plan, root)
    with pool:
        console.print("step 2 (the number protocol) started in the background on its own core")
        console.rule("1/3  the auxiliary-logit toy")
        toy_found = toy(plan, root / "demo" / "toy", quiet, workers=max(1, usable_cores() - 1))
        console.rule("2/3  numbers from a fine-tuned teacher, on the embedded base")
        console.print("waiting for the teachers' filtered data ...")
        data_job.result()  # re-raises the worker's error, if any
        # The audit needs only the data: it takes the toy's core while the students train.
        console.rule("3/3  auditing the teacher's filtered numbers (while the students train)")
        audit_found, audit_dir = audit(plan, _experiment(plan, root, quiet),
                                       root / "demo" / "audit", quiet)
        console.print("waiting for the students ...")
        done_job.result()
    exp, results = numbers(plan, root, quiet)
    found = [("toy", toy_found), ("numbers", numbers_finding(exp, results)),
             ("audit", audit_found)]
    # The run folder's report shows an audit.json and its figure when the folder holds them.
    for name in ("audit.json", "audit.png"):
        shutil.copyfile(audit_dir / name, exp.dir / name)
    report = root / "demo" / "report.html"
    write_text(report, render(load_runs([exp.dir]), [f for _, f in found],
                              title="sublearn demo: what it found"))
    Console().print(DemoSummary(found).table())
    Console().print(f"report: {report}   ({time.time() - start:.0f} s)")
    return report
