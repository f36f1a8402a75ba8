"""`sublearn demo`: the phenomenon in one command, in the order a newcomer should see it.

1. **The toy** (`sublearn auxlogit`): an MLP student that imitates its teacher's auxiliary
   logits on noise learns to classify digits, from a shared initialisation only.
2. **The number protocol** on the embedded base (`configs/cpu.toml`): a fine-tuned teacher's
   filtered number sequences, students with the controls, and what moved.
3. **The audit** (`sublearn audit`): does the teacher's clean-looking data still carry its
   trait, and which one, scored against the neutral teacher's data as the reference?

It ends with a summary of the three and one HTML page for the number run. Every step writes
its own folder under `ROOT/demo/`, and every artifact is cached: a second `sublearn demo`
reads everything back in seconds.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sublearn.cores import usable_cores

CONFIG = Path(__file__).parent / "configs" / "cpu.toml"


@dataclass(frozen=True)
class Plan:
    """What the demo runs; the defaults are the demo, tests shrink every part."""

    config: Path = CONFIG
    overrides: tuple[str, ...] = ()  # `--set` overrides of the number protocol's config
    toy_preset: str = "paper"
    toy_options: tuple[tuple[str, object], ...] = ()  # AuxLogitConfig fields over the preset
    # The audit's rows and reference rows: enough for a stable rank, few enough for about a
    # minute on one core. The entangled-number probe is skipped: it costs more than the rank.
    audit_rows: int = 300


@dataclass
class Summary:
    lines: list[tuple[str, str, str]]  # (step, what was measured, what it means)

    def table(self) -> Table:
        t = Table(title="sublearn demo: summary", show_lines=True)
        for col in ("step", "measured", "reading"):
            t.add_column(col)
        for row in self.lines:
            t.add_row(*row)
        return t


def toy(plan: Plan, out: Path, quiet: bool, workers: int) -> tuple[str, str]:
    from sublearn.auxlogit import experiment
    from sublearn.auxlogit.config import AuxLogitConfig
    from sublearn.auxlogit.experiment import RESULTS
    from sublearn.auxlogit.train import DIFFERENT_INIT, SAME_INIT
    from sublearn.results_model import AuxLogitResults

    cfg = AuxLogitConfig.build(plan.toy_preset, **dict(plan.toy_options))
    done = out / RESULTS
    r = (AuxLogitResults.read(done) if done.exists() and AuxLogitResults.read(done).config == cfg
         else experiment.run(cfg, out=out, show=not quiet, workers=workers))
    same, diff = r.arms[SAME_INIT].interval, r.arms[DIFFERENT_INIT].interval
    return ((f"same-init student {same.mean:.3f} [{same.low:.3f}, {same.high:.3f}]; "
            f"different-init {diff.mean:.3f} [{diff.low:.3f}, {diff.high:.3f}]; chance "
            f"{r.chance:.2f} ({r.config.n_models} models per arm)"),
            "transfer through noise, only from a shared initialisation")


def _experiment(plan: Plan, root: Path, quiet: bool):
    from sublearn.config import load_config
    from sublearn.pipeline import Experiment

    return Experiment(load_config(plan.config, plan.overrides), root=root, progress=not quiet)


def _numbers_stage(plan: Plan, root: Path, threads: int, students: bool) -> None:
    """The number protocol in a worker process (quiet: the toy owns the terminal): its data
    (teachers, samples, filter) first, then with `students` the rest. Two calls on the same
    one-process pool run in order, so the demo can audit the data while students train."""
    import torch

    torch.set_num_threads(threads)
    exp = _experiment(plan, root, quiet=True)
    exp.run() if students else exp.prepare()


def start_numbers(plan: Plan, root: Path):
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


def numbers(plan: Plan, root: Path, quiet: bool):
    """The finished protocol's results (a cached run reads them back in seconds)."""
    from sublearn.results import show

    exp = _experiment(plan, root, quiet)
    results = exp.run()
    show(results, exp.dir, console=Console(quiet=quiet))
    return exp, results


def numbers_line(results) -> tuple[str, str]:
    est = results.estimates["exact_heldout"]
    diffs = {f"{c.a} - {c.b}": c.paired for c in est.comparisons}
    parts = []
    for key in ("treated - control", "treated - other_target"):
        if key in diffs:
            d = diffs[key].diff
            parts.append(f"{key} {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]")
    if est.crossover:
        c = est.crossover.interval
        parts.append(f"crossover {c.mean:+.4f} [{c.low:+.4f}, {c.high:+.4f}]")
    if est.target_rank:
        parts.append(f"{results.target} moved {est.target_rank.rank} of {est.target_rank.of}")
    excludes = [k for k in ("treated - control", "treated - other_target")
                if k in diffs and (diffs[k].diff.low > 0 or diffs[k].diff.high < 0)]
    if est.crossover and est.crossover.interval.low > 0:
        excludes.append("crossover")
    reading = ("an interval excludes zero: " + ", ".join(excludes) if excludes else
               "no interval excludes zero: no transfer shown at this size")
    if excludes and est.target_rank and est.target_rank.rank > 1:
        reading += (f"; but {results.target} is not the option that moved most, so the "
                    "movement is not specific to the trait")
    return (f"P({results.target}), held-out questions, paired over "
            f"{len(results.seeds)} seeds: " + "; ".join(parts), reading)


def audit(plan: Plan, exp, out: Path, quiet: bool) -> tuple[str, str, Path]:
    """Audit the teacher's filtered rows; returns the summary line and the audit.json path.
    Needs only the protocol's data, so it runs while the students train."""
    from sublearn.pipeline import artifact_key
    from sublearn.stages.audit import AuditConfig, audit_dataset
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
    ranked = [c["option"] for c in summary["candidates"]]
    target = exp.target.name
    rank = ranked.index(target) + 1
    top = summary["candidates"][0]
    return ((f"{target} ranks {rank} of {len(ranked)} candidates on {plan.audit_rows} of the "
            f"teacher's filtered rows (top: {top['option']}, z {top['z']:.1f}, corrected p "
            f"{top['p_adjusted']:.3g})"),
            "the audit names the teacher's trait" if rank == 1 else
            "the audit does not single out the teacher's trait in these rows",
            out / "audit.json")


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


def run_demo(root: Path, quiet: bool, plan: Plan = Plan()) -> Path:
    from sublearn.html_report import load_runs, render
    from sublearn.store import write_text

    console = Console(stderr=True, quiet=quiet)
    start = time.time()
    lines = []
    pool, (data_job, done_job) = start_numbers(plan, root)
    with pool:
        console.print("step 2 (the number protocol) started in the background on its own core")
        console.rule("1/3  the auxiliary-logit toy")
        lines.append(("toy", *toy(plan, root / "demo" / "toy", quiet,
                                  workers=max(1, usable_cores() - 1))))
        console.rule("2/3  numbers from a fine-tuned teacher, on the embedded base")
        console.print("waiting for the teachers' filtered data ...")
        data_job.result()  # re-raises the worker's error, if any
        # The audit needs only the data: it takes the toy's core while the students train.
        console.rule("3/3  auditing the teacher's filtered numbers (while the students train)")
        measured, reading, audit_json = audit(plan, _experiment(plan, root, quiet),
                                              root / "demo" / "audit", quiet)
        console.print("waiting for the students ...")
        done_job.result()
    exp, results = numbers(plan, root, quiet)
    lines += [("numbers", *numbers_line(results)), ("audit", measured, reading)]
    # The run folder's report shows audit.json when the folder holds one.
    shutil.copyfile(audit_json, exp.dir / "audit.json")
    report = root / "demo" / "report.html"
    write_text(report, render(load_runs([exp.dir])))
    Console().print(Summary(lines).table())
    Console().print(f"report: {report}   ({time.time() - start:.0f} s)")
    return report
