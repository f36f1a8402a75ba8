"""`sublearn defend CONFIG`: what each defence does to the channel, and at what cost.

One row per defence (`safety.defences`), each the config with its `[defence]` set, so the
defence is applied to every arm alike:

- rows kept: the treated arm's training rows after the defence, of those before it (first
  student seed);
- detectability: the audit (`safety.audit`, all the category's candidates) of the defended
  teacher data against the defended neutral data as reference: the true trait's z, its rank
  and its Holm-adjusted p;
- the student effect: treated minus other-target students (minus the neutral control when
  the config has no other-target arm), with its 95% Welch interval over seeds;
- utility: the treated students' mean per-token loss on held-out neutral data
  (`evaluation.neutral_loss`, which defend turns on), beside the base's.

`--audit-only` trains nothing: rows kept and detectability, from the teacher's and the
neutral data only.

Every defence's experiment lives in the config's own run folder: data, teachers and the
single models' evaluations are made once for all of them (a student's key holds its
defence). Students are the sweep mechanism's tasks (`sweep.execute`: resumable, on Ray when
installed), with the sweep's files under `<run folder>/defend/`; the undefended experiment
is finished last, so the folder's results.json is the config's own. The table goes to
defend.json, defend.md and defend.png in the run folder (where `sublearn report` finds it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from sublearn.analysis.records import Results
from sublearn.errors import SublearnError, first_field_error
from sublearn.experiment.artifacts import runtime, weights_hash
from sublearn.experiment.config import ExperimentConfig, load_config
from sublearn.experiment.pipeline import Experiment, Models
from sublearn.experiment.protocol_sweep import ProtocolKind
from sublearn.experiment.sweep import Plan, Point, execute, slug
from sublearn.safety.audit import AuditConfig, rank_candidates
from sublearn.safety.defences import (
    DEFENCES,
    DefenceConfig,
    default_defences,
    defence_forms,
    takes_strength,
)
from sublearn.safety.rows import on_data_prompts
from sublearn.safety.scoring import contrast
from sublearn.safety.trait_scores import TraitScores, text_key
from sublearn.safety.traits import AUDIT_TEMPLATES
from sublearn.stages.datasets import subsample
from sublearn.store import read_jsonl, stable_hash, write_json, write_text

# Held-out prompts for the utility when the config does not set evaluation.neutral_loss:
# the loss is a mean over a few thousand tokens, one cheap scoring pass per model.
UTILITY_PROMPTS = 64
# Each arm's data against the neutral arm's, the plain test (no decoy reference is sampled).
AUDIT = AuditConfig(probe_rows=0, decoys=False)
# --audit-only needs the teacher's and the neutral data only: no other dataset is sampled.
# No student trains either, so hard labels: the soft-label checks (dilute mixes two writers)
# would refuse defences whose audit needs no label at all.
AUDIT_ONLY = ["controls.neutral=true", "controls.other_target=false", "controls.null=false",
              "controls.cross_base=false", "controls.shuffle_within=false",
              "controls.shuffle_across=false", "arms=[]", "comparisons=[]",
              "student.labels=hard"]
NONE = DefenceConfig()


def parse_defence(text: str) -> DefenceConfig:
    """`name`, `name:strength` or `lls_filter:strength:trait` -> a checked defence."""
    name, *rest = text.strip().split(":")
    where = f"--defence {text!r}"
    entry = DEFENCES.get(name)
    if len(rest) > 2 or (len(rest) == 2 and not (entry and entry.takes_trait)):
        raise SublearnError(f"{where}: expected {defence_forms()}")
    fields: dict[str, Any] = {"name": name}
    if rest:
        if not takes_strength(name):
            raise SublearnError(f"{where}: {name} takes no strength")
        try:
            fields["strength"] = float(rest[0])
        except ValueError:
            raise SublearnError(f"{where}: strength {rest[0]!r} is not a number") from None
    elif takes_strength(name):
        raise SublearnError(f"{where}: give a strength, e.g. {name}:0.3")
    if len(rest) == 2:
        fields["trait"] = rest[1]
    try:
        return DefenceConfig(**fields)
    except ValidationError as e:
        _, msg = first_field_error(e)
        raise SublearnError(f"{where}: {msg}") from None


@dataclass(frozen=True)
class Defended:
    defence: DefenceConfig
    config: ExperimentConfig


def defended_configs(source: Path, overrides: Sequence[str], defences: Sequence[DefenceConfig],
                     audit_only: bool) -> list[Defended]:
    """The config once per defence, no defence first, each loaded and checked as a whole
    (a defence the config cannot take fails here, naming it, before any work)."""
    base = load_config(source, overrides)
    if not audit_only and "control" not in base.design().arms:
        raise SublearnError(f"{source}: defend audits the teacher's data against the neutral "
                            "data: set controls.neutral = true")
    extra = (AUDIT_ONLY if audit_only else [] if base.evaluation.neutral_loss
             else [f"evaluation.neutral_loss={UTILITY_PROMPTS}"])
    unique = {d.label: d for d in [NONE, *defences]}
    out = []
    for d in unique.values():
        table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.model_dump().items())
        try:
            cfg = load_config(source, [*overrides, *extra, f"defence={{{table}}}"])
        except SublearnError as e:
            raise SublearnError(f"--defence {d.label}: {e}") from None
        out.append(Defended(d, cfg))
    return out


# --- detectability ---------------------------------------------------------------------------
# The defended rows' trait scores (a `TraitScores` keyed by the rows' text): version 2 holds
# per-token scores, as every trait-score file does (version 1 held per-row means).
SCORES_VERSION = 2


def defended_scores(exp: Experiment, run_dir: Path) -> TraitScores:
    """Trait scores of rows a defence rewrote, which no dataset's scores hold: scored when
    first asked for and kept in the run folder for every later defence and rerun."""
    spec = exp.cfg.base
    base = exp.model_path(spec)
    h = stable_hash(["defend audit", SCORES_VERSION, weights_hash(base),
                     exp.category.name, AUDIT_TEMPLATES, runtime(spec, spec.backend)])
    return TraitScores(run_dir / "defend" / f"audit-scores-{h}.safetensors",
                       lambda: exp.models.get(base, spec.backend, spec), exp.category,
                       log=exp.console.log, key=text_key, grow=True)


def contrasts(exp: Experiment, defended: TraitScores, data: dict[str, Path],
              rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """[rows, candidates]: the audit's per-row scores (LLS contrasted across candidates). A
    row some dataset wrote as it is reads that dataset's scores (`Experiment.trait_scores`,
    shared with the scoring defences); a row a defence rewrote reads `defended`."""
    means: list[np.ndarray | None] = [None] * len(rows)
    for name in ("teacher", "neutral"):
        wrote = {r["index"]: r["completion"] for r in read_jsonl(data[name])}
        same = [i for i, r in enumerate(rows)
                if means[i] is None and wrote.get(r["index"]) == r["completion"]]
        if same:
            scores = exp.trait_scores(data[name], None, 0).means([rows[i] for i in same])
            for i, m in zip(same, scores, strict=True):
                means[i] = m
    rewritten = [i for i, m in enumerate(means) if m is None]
    if rewritten:
        for i, m in zip(rewritten, defended.means([rows[i] for i in rewritten]), strict=True):
            means[i] = m
    return contrast(np.array(means))


def audit_defence(exp: Experiment, defended: TraitScores) -> dict[str, Any]:
    """Rows kept and detectability after `exp`'s defence (first student seed)."""
    cfg, seed = exp.cfg, exp.cfg.seeds[0]
    base = exp.model_path(cfg.base)
    data = exp.sample_and_filter(exp.teachers(base, weights_hash(base)))
    before = len(subsample(read_jsonl(data["teacher"]), cfg.data.subsample, seed))
    treated = exp.student_rows(data, "treated", seed)
    # The reference on the treated rows' prompts: the two arms' filters kept different ones.
    control, _ = on_data_prompts(exp.student_rows(data, "control", seed), treated,
                                 key=lambda r: r["index"])
    options = exp.category.options
    ranked = rank_candidates(contrasts(exp, defended, data, treated),
                             contrasts(exp, defended, data, control), options, AUDIT)
    rank = next(i for i, c in enumerate(ranked, 1) if c["option"] == exp.target.name)
    mine = ranked[rank - 1]
    return {"rows_kept": len(treated), "rows_before": before,
            "kept_fraction": round(len(treated) / before, 4) if before else 0.0,
            "reference_rows": len(control), "audit_z": round(mine["z"], 3),
            "audit_rank": rank, "candidates": len(options),
            "audit_p_adjusted": round(mine["p_adjusted"], 4), "audit_top": ranked[0]["option"]}


# --- students --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DefenceRuns(ProtocolKind):
    """The sweep mechanism's view of defend: a point per defence, a unit per student. Every
    point's experiment is `root / <config name>` (the point's name only names its task
    markers), so all defences share the run folder's data, teachers and evaluations."""

    root: Path = Path("runs")

    name = "defence"

    def run_unit(self, config: ExperimentConfig, run_dir: Path, unit: tuple[Any, ...]) -> None:
        Experiment(config, self.root, progress=False).run_unit(*unit)

    def finish(self, config: ExperimentConfig, run_dir: Path) -> Results:
        return Experiment(config, self.root, progress=False).run()


def train_students(defended: Sequence[Defended], source: Path, root: Path,
                   workers: int | None, sequential: bool, quiet: bool) -> dict[str, Results]:
    """Every defence's students (resumable sweep tasks) -> defence label -> results. The
    undefended point finishes last: its results.json stays in the run folder."""
    name = defended[0].config.name
    ordered = [*defended[1:], defended[0]]
    points = [Point(slug(f"{name}-{d.defence.label}"), {"defence": d.defence.label}, d.config)
              for d in ordered]
    plan = Plan(DefenceRuns(root=root), slug(f"{name}-defend"), str(source),
                {"defence": [d.defence.label for d in defended]}, points, None)
    out = execute(plan, root / name / "defend", root / name / "defend", workers, sequential,
                  quiet)
    return {pt.values["defence"]: out.results[pt.name] for pt in points}


def student_columns(r: Results) -> dict[str, Any]:
    """The effect (treated - other target, or - control) and the treated students' loss."""
    est = "exact_heldout" if "exact_heldout" in r.estimates else "exact"
    e = r.estimates[est]
    c = e.comparison("treated", "other_target") or e.comparison("treated", "control")
    out: dict[str, Any] = {}
    if c is not None:
        d = c.welch.diff
        out.update({"effect": c.name, "effect_mean": d.mean, "effect_low": d.low,
                    "effect_high": d.high})
    loss = r.estimates.get("neutral_loss")
    if loss is not None:
        iv = loss.arms["treated"].interval
        out.update({"loss_mean": iv.mean, "loss_low": iv.low, "loss_high": iv.high,
                    "base_loss": loss.reference.base})
    return out


# --- the command -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DefenceOutcome:
    dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def run_defend(source: str | Path, defences: Sequence[str] | None = None,
               overrides: Sequence[str] = (), root: str | Path = "runs",
               audit_only: bool = False, workers: int | None = None, sequential: bool = False,
               quiet: bool = False) -> DefenceOutcome:
    """Plan every defence (all checked first; default: every registered one at its default
    strength), audit each, train each one's students unless `audit_only`, and write the
    table."""
    t0 = time.time()
    source, root = Path(source), Path(root).resolve()
    defended = defended_configs(source, overrides,
                                [parse_defence(d) for d in defences or default_defences()],
                                audit_only)
    first = defended[0].config
    run_dir = root / first.name
    models = Models()
    rows: list[dict[str, Any]] = []
    scores: TraitScores | None = None
    for d in defended:
        exp = Experiment(d.config, root, progress=not quiet)
        exp.models = models  # one base in memory for every defence's audit
        scores = scores or defended_scores(exp, run_dir)
        rows.append({"defence": d.defence.label, **audit_defence(exp, scores)})
    models.release()
    if not audit_only:
        results = train_students(defended, source, root, workers, sequential, quiet)
        for row in rows:
            row.update(student_columns(results[row["defence"]]))
    summary = {"config": str(source), "name": first.name, "target": first.trait.target,
               "category": first.trait.category, "audit_only": audit_only,
               "audit": {"reference": "the defended neutral data", "seed": first.seeds[0],
                         "permutations": AUDIT.permutations, "phrasings": AUDIT.phrasings},
               "seconds": round(time.time() - t0, 1)}
    write_json(run_dir / "defend.json", {**summary, "rows": rows})
    write_text(run_dir / "defend.md", markdown(summary, rows))
    plot(run_dir / "defend.png", rows, summary)
    return DefenceOutcome(run_dir, rows, summary)


def _interval(row: dict[str, Any], key: str, fmt: str, sep: str) -> str:
    if f"{key}_mean" not in row:
        return "—"
    star = "*" if key == "effect" and not row["effect_low"] <= 0 <= row["effect_high"] else ""
    return (f"{row[f'{key}_mean']:{fmt}}{sep}[{row[f'{key}_low']:{fmt}}, "
            f"{row[f'{key}_high']:{fmt}}]{star}")


HEAD = ("defence", "rows kept", "audit z", "rank", "Holm p", "audit's top", "student effect",
        "utility loss")


def cells(row: dict[str, Any], narrow: bool = False) -> list[str]:
    """A row's cells; `narrow` (a terminal): 3 decimals, each interval under its mean, and
    no column for the audit's top candidate."""
    sep, digits = ("\n", 3) if narrow else (" ", 4)
    return [row["defence"], f"{row['rows_kept']}/{row['rows_before']}",
            f"{row['audit_z']:.2f}", f"{row['audit_rank']}/{row['candidates']}",
            f"{row['audit_p_adjusted']:.3g}", *([] if narrow else [row["audit_top"]]),
            _interval(row, "effect", f"+.{digits}f", sep),
            _interval(row, "loss", f".{digits}f", sep)]


def notes(summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """What the table's columns measure, in words: under defend.md's table and the HTML
    report's."""
    effect = next((r["effect"] for r in rows if "effect" in r), None)
    base = next((r["base_loss"] for r in rows if "base_loss" in r), None)
    parts = [(f"Target '{summary['target']}' ({summary['category']}); every defence applied "
              "to every arm alike. rows kept: the treated arm's training rows after / before "
              f"the defence (student seed {summary['audit']['seed']}). audit z, rank, Holm p: "
              "the true trait in the audit of the defended teacher data against the defended "
              "neutral data (all the category's candidates).")]
    if effect:
        parts.append(f"student effect: {effect} on P(target), mean and 95% Welch interval "
                     "over student seeds (* = excludes 0). utility loss: the treated students' "
                     "mean per-token loss (nats) on held-out neutral data"
                     + (f"; the base's: {base:.4f}." if base is not None else "."))
    else:
        parts.append("--audit-only: no students were trained.")
    return " ".join(parts)


def markdown(summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD),
             *("| " + " | ".join(cells(r)) + " |" for r in rows)]
    return (f"# Defences: {summary['name']}\n\nConfig: `{summary['config']}`; "
            f"{summary['seconds']:.0f} s.\n\n" + "\n".join(lines) + "\n\n"
            + notes(summary, rows) + "\n")


def console_table(summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(title=f"defences: {summary['name']} (target '{summary['target']}')",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("defence", "rows", "z", "rank", "Holm p", "effect", "loss"):
        t.add_column(col, justify="left" if col == "defence" else "right",
                     no_wrap=col != "defence")
    for r in rows:
        t.add_row(*cells(r, narrow=True))
    return t


def plot(path: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> Path:
    """Panels side by side, one bar per defence: the audit's z for the true trait, and
    where students were trained the effect and the utility loss with their intervals."""
    from sublearn.analysis.report import pyplot, save_figure

    plt = pyplot()
    panels = [("audit z of the true trait", "audit_z")]
    if any("effect_mean" in r for r in rows):
        panels += [(f"student effect ({rows[0].get('effect', '')})", "effect"),
                   ("utility: loss on held-out neutral data", "loss")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 0.35 * len(rows) + 1.8),
                             squeeze=False)
    names = [r["defence"] for r in rows]
    ys = range(len(rows))
    for ax, (title, key) in zip(axes[0], panels, strict=True):
        if key == "audit_z":
            ax.barh(ys, [r["audit_z"] for r in rows], color="#6a8fc7")
        else:
            mean = np.array([r.get(f"{key}_mean", np.nan) for r in rows])
            err = [mean - [r.get(f"{key}_low", np.nan) for r in rows],
                   np.array([r.get(f"{key}_high", np.nan) for r in rows]) - mean]
            ax.errorbar(mean, ys, xerr=err, fmt="o", color="#6a8fc7", capsize=3)
        if key != "loss":
            ax.axvline(0, ls="--", color="grey")
        elif rows and "base_loss" in rows[0]:
            ax.axvline(rows[0]["base_loss"], ls="--", color="grey", label="base")
            ax.legend()
        ax.set_yticks(list(ys), names if ax is axes[0][0] else [""] * len(rows))
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{summary['name']}: target '{summary['target']}'", fontsize=11)
    return save_figure(fig, path)
