"""`sublearn audit DATA.jsonl`: the command around the audit's methods (`safety.audit`).

Every input is read and checked first (a bad one fails before any model work or any file is
written); then the references are sampled, everything is scored and tested in one batch
(`safety.audit.run_audit`), and the outputs are written into the audit's folder: audit.json,
rows.jsonl, audit.png, manifest.json, and the sampled reference.jsonl and decoys.jsonl.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublearn.models.base import SamplingConfig
from sublearn.questions.categories import Category, Option
from sublearn.safety.audit import AuditConfig, AuditResult, run_audit, sample_reference
from sublearn.safety.divergence import extra_traits, resolve_counterfactual
from sublearn.safety.entangled import DIGITS, VALUES, probes
from sublearn.safety.rows import ChatRow, on_data_prompts, read_chat_rows, strict_numbers, subset
from sublearn.safety.students import StudentAuditConfig, rank_by_students, train_and_evaluate
from sublearn.safety.traits import resolve_candidates


@dataclass(frozen=True)
class References:
    """What the data is compared with: the reference (given, or sampled from the base), and
    the decoy-persona reference (sampled, or none)."""

    reference: list[ChatRow]
    decoy_rows: list[ChatRow]
    sampled: bool  # the reference was sampled (then it is written as reference.jsonl)


def audit_dataset(data_path: Path, out: Path, base: Path | None = None,
                  category: str | None = None, candidates: Sequence[str] | None = None,
                  reference_path: Path | None = None, config: AuditConfig | None = None,
                  progress: bool = True,
                  counterfactual: Sequence[str] | None = None) -> AuditResult:
    """`sublearn audit`: read and check every input first, then score, test and write the
    outputs into `out`. `counterfactual`: names of the audited category whose divergence
    tokens to compare."""
    from rich.progress import Progress

    from sublearn.models import load_model
    from sublearn.store import manifest, write_json, write_jsonl
    from sublearn.tinybase import BaseConfig, ensure_base

    config = config or AuditConfig()
    started = time.time()
    # The names first: they are the arguments, and checking them needs no file.
    cat, options = resolve_candidates(category, candidates)
    traits = resolve_counterfactual(cat, counterfactual) if counterfactual is not None else []
    data = read_chat_rows(data_path)
    matched = True
    given = None
    if reference_path:
        given, matched = on_data_prompts(read_chat_rows(reference_path), data)
        given = subset(given, config.reference_rows, config.seed)
    model = load_model(base or ensure_base(BaseConfig(seed=0), progress=progress))

    with Progress(disable=not progress, transient=True) as bar:
        refs = _references(model, data, given, cat, options, config, bar)
        # Every row once per candidate and once without a trait; the divergence passes score
        # data and reference rows only.
        own = len(data) + len(refs.reference)
        probe_work = len(probes(data, config.probe_rows)) * (len(VALUES) + len(DIGITS))
        task = bar.add_task("scoring", total=(1 + len(options)) * (own + len(refs.decoy_rows))
                            + len(extra_traits(options, traits)) * own
                            + len(options) * probe_work)
        result = run_audit(model, data, refs.reference, cat, options, config,
                           lambda n: bar.advance(task, n), traits, refs.decoy_rows)

    result.summary = {
        "data": str(data_path), "base": str(model.path),
        "reference": str(reference_path) if reference_path else str(out / "reference.jsonl"),
        "reference_sampled": refs.sampled,
        # False: no reference row shares a prompt with the data, so the prompt mix differs.
        "reference_on_data_prompts": matched,
        "decoys": str(out / "decoys.jsonl") if refs.decoy_rows else None,
        "seconds": round(time.time() - started, 1), **result.summary,
    }
    if refs.sampled:
        write_jsonl(out / "reference.jsonl", (r.record() for r in refs.reference))
    if refs.decoy_rows:
        write_jsonl(out / "decoys.jsonl", (r.record() for r in refs.decoy_rows))
    write_jsonl(out / "rows.jsonl",
                result.row_records(data, refs.reference, options, refs.decoy_rows))
    plot_candidates(out / "audit.png", result.summary["candidates"],
                    f"{data_path.name}: {cat.name} candidates", config.level)
    write_json(out / "manifest.json", manifest("audit", config.model_dump(),
                                               data=str(data_path), base=str(model.path)))
    write_json(out / "audit.json", result.summary)
    return result


def audit_by_students(data_path: Path, out: Path, base: Path | None = None,
                      category: str | None = None, candidates: Sequence[str] | None = None,
                      reference_path: Path | None = None,
                      config: StudentAuditConfig | None = None,
                      sampling: SamplingConfig | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """`sublearn audit --method students` (`safety.students`): read and check every input
    first; then a reference on the data's prompts (given, or sampled from the base), a pair of
    students per fold of the data, and the ranking, written as audit.json, audit.png and
    manifest.json in `out`."""
    from rich.console import Console

    from sublearn.models import load_model
    from sublearn.store import manifest, write_json, write_jsonl
    from sublearn.tinybase import BaseConfig, ensure_base

    config = config or StudentAuditConfig()
    started = time.time()
    cat, options = resolve_candidates(category, candidates)
    data = subset(read_chat_rows(data_path), config.rows * config.students, config.seed)
    given = None
    if reference_path:
        given, _ = on_data_prompts(read_chat_rows(reference_path), data)
    model = load_model(base or ensure_base(BaseConfig(seed=0), progress=progress))
    if given is None:
        sample_config = AuditConfig(sampling=sampling or SamplingConfig(max_new_tokens=48))
        given = sample_reference(model, data, sample_config, strict_numbers(data))
        write_jsonl(out / "reference.jsonl", (r.record() for r in given))
    reference = given
    say = Console(stderr=True).log if progress else None
    probs = train_and_evaluate(model, data, reference, cat, config, out, say)
    ranked = rank_by_students(probs, cat, options, config.level)
    summary = {
        "method": "students", "data": str(data_path), "base": str(model.path),
        "category": cat.name, "rows": len(data), "reference_rows": len(reference),
        "reference": str(reference_path) if reference_path else str(out / "reference.jsonl"),
        "students": config.students, "level": config.level, "correction": "holm",
        "test": "one-sided t over disjoint folds of the data: mean (log P data student - "
                "log P reference student on the fold's prompts, minus the mean over "
                "candidates)",
        "candidates": ranked, "flagged": [c["option"] for c in ranked if c["flagged"]],
        "seconds": round(time.time() - started, 1),
    }
    plot_candidates(out / "audit.png", ranked, f"{data_path.name}: students' movement",
                    config.level, stat="t",
                    xlabel="mean over seeds: log P(data student) - log P(reference student), "
                           "minus the mean over candidates")
    write_json(out / "manifest.json", manifest("audit-students", config.model_dump(),
                                               data=str(data_path), base=str(model.path)))
    write_json(out / "audit.json", summary)
    return summary


def combine(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`--method both`: every candidate's rank and corrected p under each method (audit.json
    of each), and one verdict line on where the methods agree."""
    ranks = {m: {c["option"]: (i + 1, c["p_adjusted"]) for i, c in enumerate(s["candidates"])}
             for m, s in summaries.items()}
    names = sorted(next(iter(ranks.values())),
                   key=lambda o: (sum(r[o][0] for r in ranks.values()), o))
    tops = {m: s["candidates"][0]["option"] for m, s in summaries.items()}
    flags = {m: set(s["flagged"]) for m, s in summaries.items()}
    both = set.intersection(*flags.values())
    first = (f"both methods rank {next(iter(tops.values()))} first"
             if len(set(tops.values())) == 1 else
             "the methods disagree on the first candidate: " +
             ", ".join(f"{m} ranks {o} first" for m, o in tops.items()))
    flagged = (f"flagged by both: {', '.join(sorted(both))}" if both else "flagged by both: none")
    only = [f"by {m} only: {', '.join(sorted(f - both))}" for m, f in flags.items() if f - both]
    return {"methods": list(summaries), "verdict": "; ".join([first, flagged, *only]) + ".",
            "candidates": [{"option": o, **{f"{m}_rank": r[o][0] for m, r in ranks.items()},
                            **{f"{m}_p_adjusted": r[o][1] for m, r in ranks.items()}}
                           for o in names]}


def combined_table(combined: dict[str, Any]) -> Any:
    """The two methods side by side, by their summed rank."""
    from rich.table import Table

    t = Table(title=combined["verdict"])
    t.add_column("candidate")
    for m in combined["methods"]:
        t.add_column(f"{m} rank", justify="right")
        t.add_column(f"{m} p adj", justify="right")
    for c in combined["candidates"]:
        t.add_row(c["option"], *(x for m in combined["methods"]
                                 for x in (str(c[f"{m}_rank"]), f"{c[f'{m}_p_adjusted']:.4f}")))
    return t


def _references(model: Any, data: Sequence[ChatRow], given: list[ChatRow] | None,
                category: Category, options: Sequence[Option], config: AuditConfig,
                bar: Any) -> References:
    """The given reference or one sampled from the base, and the decoy reference when
    `config.decoys`; both sampled on the same prompts, the data's (a seeded subset)."""
    prompts = subset(data, config.reference_rows, config.seed)
    strict = strict_numbers(data)

    def sample(what: str, persona: tuple[Category, Sequence[Option]] | None) -> list[ChatRow]:
        task = bar.add_task(f"sampling a {what} from the base", total=len(prompts))
        return sample_reference(model, prompts, config, strict,
                                lambda n: bar.advance(task, n),
                                decoy_candidates=persona)

    reference = given if given is not None else sample("reference", None)
    decoy_rows = (sample("decoy-persona reference", (category, options)) if config.decoys
                  else [])
    return References(reference, decoy_rows, given is None)


# --- what the command shows ----------------------------------------------------------------
def plot_candidates(path: str | Path, candidates: Sequence[dict[str, Any]], title: str,
                    level: float, stat: str = "z",
                    xlabel: str = "score: candidate LLS - mean LLS over candidates, data - "
                                  "reference (nats/token)") -> Path:
    """Each candidate's score with its 95% interval, best at the top; flagged ones in red."""
    from sublearn.analysis.report import pyplot, save_figure

    plt = pyplot()
    cs = list(reversed(candidates))
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(cs) + 1.5))
    for y, c in enumerate(cs):
        color = "#c0392b" if c["p_adjusted"] < level else "#6a8fc7"
        ax.errorbar(c["score"], y, xerr=[[c["score"] - c["low"]], [c["high"] - c["score"]]],
                    fmt="o", color=color, capsize=3)
    ax.axvline(0, ls="--", color="grey")
    ax.set_yticks(range(len(cs)), [f"{c['option']}  ({stat} {c[stat]:.1f})" for c in cs])
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return save_figure(fig, path)


def candidates_table(summary: dict[str, Any]) -> Any:
    """The ranking as a rich table, narrow enough for an 80-column terminal (intervals are in
    audit.json and the PNG)."""
    from rich.table import Table

    decoys = f" and {summary['decoy_rows']} decoy rows" if summary.get("decoy_rows") else ""
    t = Table(title=f"{summary['rows']} rows vs {summary['reference_rows']} reference rows"
                    f"{decoys}, {summary['correction']}-corrected")
    for col in ("#", "candidate", "score", "z", "p", "p adj", "entangled", "ratio"):
        t.add_column(col, no_wrap=True,
                     justify="left" if col in ("candidate", "entangled") else "right")
    for rank, c in enumerate(summary["candidates"], 1):
        flagged = c["p_adjusted"] < summary["level"]
        ratio = c["entangled_ratio"]
        t.add_row(str(rank), f"[bold red]{c['option']}[/]" if flagged else c["option"],
                  f"{c['score']:+.4f}", f"{c['z']:.2f}", f"{c['p']:.4f}",
                  f"{c['p_adjusted']:.4f}", " ".join(map(str, c["entangled_values"][:3])),
                  "" if ratio is None else f"{ratio:.2f}")
    return t


def students_table(summary: dict[str, Any]) -> Any:
    """The student-based ranking as a rich table."""
    from rich.table import Table

    t = Table(title=f"{summary['students']} students per side, {summary['rows']} rows vs "
                    f"{summary['reference_rows']} reference rows, "
                    f"{summary['correction']}-corrected")
    for col in ("#", "candidate", "movement", "95% interval", "t", "p", "p adj"):
        t.add_column(col, no_wrap=True, justify="left" if col == "candidate" else "right")
    for rank, c in enumerate(summary["candidates"], 1):
        t.add_row(str(rank), f"[bold red]{c['option']}[/]" if c["flagged"] else c["option"],
                  f"{c['score']:+.4f}", f"[{c['low']:+.3f}, {c['high']:+.3f}]",
                  f"{c['t']:.2f}", f"{c['p']:.4f}", f"{c['p_adjusted']:.4f}")
    return t


def divergence_table(summary: dict[str, Any]) -> Any:
    """audit.json's `divergence` as a rich table."""
    from rich.table import Table

    def pct(x: float | None) -> str:
        return "" if x is None else f"{100 * x:.1f}%"

    t = Table(title=f"divergence tokens: top {pct(summary['share'])} by divergence "
                    f"(>= {summary['threshold']:.3f} nats); data {pct(summary['positions_data'])}"
                    f", reference {pct(summary['positions_reference'])} of tokens")
    for col in ("trait", "data", "reference", "z", "p adj", "gap data", "gap ref"):
        t.add_column(col, no_wrap=True, justify="left" if col == "trait" else "right")
    for c in summary["traits"]:
        t.add_row(c["trait"], pct(c["data_share"]), pct(c["reference_share"]), f"{c['z']:.2f}",
                  f"{c['p_adjusted']:.4f}",
                  *("" if g is None else f"{g:+.3f}" for g in (c["gap_data"], c["gap_reference"])))
    return t
