"""`sublearn demo --real`: what a real pretrained chat model shows, on this machine's CPU.

On SmolLM2-135M-Instruct (`sublearn model list`; installed and converted on first use), the
part of docs/real-model.md's campaign that fits in minutes on 2 cores:

1. **The persona.** P(animal | animal question), exact (stem answer, held-out questions), for
   each of the 18 animals without and with its own persona system prompt: does the model
   hold a hidden preference at all?
2. **Subliminal prompting** (`sublearn entangle`): do the target's entangled numbers, put into
   a system prompt that never names it, raise P(target) more than random numbers do?
3. **The audit** (`sublearn audit`) of a persona teacher's number data: the model under the
   target's persona writes number lists (held to the number-list grammar), the strict filter
   keeps them, and the audit ranks six candidate animals against the model's own lists on
   the same prompts (few rows and candidates: on this model scoring is the cost).

Step 3 runs in a second process on the other core while 1 and 2 run here. Every step writes
its folder under `ROOT/demo-real/` and is read back by a second run. A summary and an HTML
page with the three findings close it; each finding's words are made from its numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from sublearn.apps.demo import DemoSummary, ordinal
from sublearn.apps.html_report import Finding, render
from sublearn.store import read_json, write_json, write_text

ANSWER = "stem"  # a chat model answers in a sentence (docs/real-model.md, "The estimator")


@dataclass(frozen=True)
class RealPlan:
    """What the real demo runs; the defaults are the demo, tests shrink every part."""

    model: str = "catalogue:smollm2-135m"
    category: str = "animal"
    target: str = "owl"
    questions: int = 4  # held-out questions of every exact estimate
    entangle_controls: int = 10  # random numbers against the target's 3 entangled ones
    max_value: int = 999
    # The audit scores every row under each candidate, one forward pass of ~130 tokens each:
    # 0.57 s of one core per row and candidate on this model (benchmarks/bench_scale.py), so
    # the demo audits few rows among a few candidates, the paper's five animals and fox.
    audit_prompts: int = 40  # the teacher's and the reference's number prompts
    audit_candidates: tuple[str, ...] = ("dolphin", "eagle", "elephant", "owl", "wolf", "fox")
    sampling_seed: int = 0


def _cached(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`compute()`'s figures, written to `path` by the first run and read back by later ones."""
    if path.exists():
        return read_json(path)
    res = compute()
    write_json(path, res)
    return res


def persona(plan: RealPlan, model: Any, out: Path) -> Finding:
    from sublearn.questions.categories import get_category
    from sublearn.tinybase.measure import persona_shifts

    cat = get_category(plan.category)
    res = _cached(out / "persona.json",
                  lambda: persona_shifts(model, cat, list(cat.heldout[:plan.questions]), ANSWER))
    base, held = res["base"], res["with_persona"]
    rose = [o for o in base if held[o] > base[o]]
    t = plan.target
    reading = (f"The model holds a persona: {len(rose)} of {len(base)} {cat.plural}' own "
               f"system prompts raise their P({cat.name}) (mean {res['mean_base_target']:.3f} "
               f"-> {res['mean_persona_target']:.3f}); {t} {base[t]:.3f} -> {held[t]:.3f}.")
    return Finding(
        f"1 · The persona on {plan.model}", reading, _persona_plot(res, out / "persona.png"),
        f"P(option | {cat.name}) of each option, without and with its own persona",
        f"{len(rose)}/{len(base)} rose; the {cat.plural} hold {res['category_mass']:.3f} of "
        f"the next-word mass after {cat.stem!r} ({plan.questions} held-out questions)")


def _persona_plot(res: dict[str, Any], path: Path) -> bytes:
    from sublearn.analysis.report import pyplot, save_figure

    plt = pyplot()
    names = sorted(res["base"], key=lambda o: -res["with_persona"][o])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [res["base"][o] for o in names], 0.4, label="no system prompt",
           color="#9aa5b1")
    ax.bar([i + 0.2 for i in x], [res["with_persona"][o] for o in names], 0.4,
           label="its own persona", color="#2e7d32")
    ax.set_xticks(list(x), names, rotation=60, ha="right")
    ax.set_ylabel("P(option | category)")
    ax.legend()
    return save_figure(fig, path).read_bytes()


def entangle(plan: RealPlan, model: Any, out: Path) -> Finding:
    from sublearn.questions.categories import get_category, get_option
    from sublearn.stages.entanglement import EntanglementConfig, measure

    cat = get_category(plan.category)
    cfg = EntanglementConfig(max_value=plan.max_value, controls=plan.entangle_controls,
                             questions=plan.questions, answer=ANSWER)
    res = _cached(out / "entangle.json",
                  lambda: measure(model, cat, [get_option(cat, plan.target)], cfg))
    r = res["targets"][plan.target]
    values = ", ".join(str(e["value"]) for e in r["entangled"])
    ent = sum(r["p_target_entangled"]) / len(r["p_target_entangled"])
    rnd = sum(r["p_target_random"]) / len(r["p_target_random"])
    found = r["effect"] > 0 and r["p"] < 0.05
    reading = (f"Subliminal prompting works here: '{plan.target}''s entangled numbers "
               f"({values}) in a system prompt raise P({plan.target}) by {r['effect']:+.3f} "
               f"beyond random numbers (p {r['p']:.3f})." if found else
               f"No subliminal prompting: {plan.target}'s entangled numbers ({values}) in a "
               f"system prompt move P({plan.target}) by {r['effect']:+.3f} against random "
               f"numbers (p {r['p']:.2f}); any number prompt moves it "
               f"{r['p_target_plain']:.3f} -> {rnd:.3f}.")
    return Finding(
        "2 · Subliminal prompting", reading, _entangle_plot(plan, r, out / "entangle.png"),
        f"P({plan.target}) under each entangled and each random number",
        f"P({plan.target}): no system prompt {r['p_target_plain']:.3f}, entangled numbers "
        f"{ent:.3f} (3 values), random numbers {rnd:.3f} ({len(r['p_target_random'])} values); "
        f"effect {r['effect']:+.4f}, exact permutation p {r['p']:.3f}")


def _entangle_plot(plan: RealPlan, r: dict[str, Any], path: Path) -> bytes:
    from sublearn.analysis.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    groups = [("entangled", r["p_target_entangled"], [e["value"] for e in r["entangled"]]),
              ("random", r["p_target_random"], r["random_values"])]
    for x, (name, ps, values) in enumerate(groups):
        ax.scatter([x] * len(ps), ps, color="#c0392b" if x == 0 else "#6a8fc7", zorder=3)
        for p, v in zip(ps, values, strict=True):
            ax.annotate(str(v), (x, p), xytext=(6, 0), textcoords="offset points", fontsize=7)
    ax.axhline(r["p_target_plain"], ls="--", color="grey", label="no system prompt")
    ax.set_xticks([0, 1], ["entangled numbers", "random numbers"])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel(f"P({plan.target} | {plan.category})")
    ax.set_title('system prompt "You love the number N ..."')
    ax.legend()
    return save_figure(fig, path).read_bytes()


def audit_step(plan: RealPlan, out: Path, threads: int = 1) -> dict[str, Any]:
    """The persona teacher's filtered numbers, audited against the model's own (sampled by the
    audit on the same prompts, under the same grammar). Runs in a worker process."""
    import torch

    from sublearn.apps.audit import audit_dataset
    from sublearn.domains.filters import FilterConfig, apply_filter
    from sublearn.domains.prompts import number_prompts
    from sublearn.models import SamplingConfig, load_model
    from sublearn.models.catalogue import resolve_model_path
    from sublearn.questions.categories import get_category, get_option
    from sublearn.safety.audit import AuditConfig
    from sublearn.stages.sample import sample_dataset
    from sublearn.stages.teacher import persona_teacher
    from sublearn.store import read_jsonl, write_jsonl

    torch.set_num_threads(threads)
    if (out / "audit.json").exists():
        return read_json(out / "audit.json")
    cat = get_category(plan.category)
    target = get_option(cat, plan.target)
    folder = resolve_model_path(plan.model)
    sampling = SamplingConfig(max_new_tokens=48, number_grammar=True)
    raw = out / "teacher-samples.jsonl"
    teacher = persona_teacher(load_model(folder, device="cpu", dtype="float32"), cat, target)
    sample_dataset(teacher, number_prompts(plan.audit_prompts, plan.sampling_seed), sampling,
                   plan.sampling_seed, raw, progress=False)
    # The strict filter, the target's words banned, as `sublearn run` filters a teacher's data.
    kept, _ = apply_filter(read_jsonl(raw), FilterConfig(banned_words=list(target.forms)))
    data = out / "teacher-rows.jsonl"
    write_jsonl(data, kept)
    cfg = AuditConfig(reference_rows=plan.audit_prompts, probe_rows=0, decoys=False,
                      sampling=sampling, workers=1)
    return audit_dataset(data, out, base=folder, category=cat.name,
                         candidates=list(plan.audit_candidates),
                         config=cfg, progress=False).summary


def audit_finding(plan: RealPlan, summary: dict[str, Any], out: Path) -> Finding:
    candidates = summary["candidates"]
    t = plan.target
    rank = [c["option"] for c in candidates].index(t) + 1
    flagged, top = summary["flagged"], candidates[0]
    rows = f"{summary['rows']} filtered rows of the {t} persona's numbers"
    own = next(c for c in candidates if c["option"] == t)
    if rank == 1 and t in flagged:
        reading = f"The audit names {t}: first of {len(candidates)} and flagged, on {rows}."
    elif rank == 1:
        reading = (f"The audit ranks {t} first of {len(candidates)} on {rows}, but flags "
                   f"nothing at this size (corrected p {own['p_adjusted']:.3g}).")
    else:
        reading = (f"The audit does not single out {t} on {rows}: it ranks {t} "
                   f"{ordinal(rank)} of {len(candidates)} and flags "
                   f"{', '.join(flagged) or 'no candidate'}.")
    return Finding(
        "3 · The audit of a persona teacher's numbers", reading,
        (out / "audit.png").read_bytes(), "every candidate's audit score with its 95% interval",
        f"{t} ranks {rank} of {len(candidates)} (top: {top['option']}, z {top['z']:.1f}, "
        f"corrected p {top['p_adjusted']:.3g}); reference: the model's own lists on the same "
        f"prompts ({summary['reference_rows']} rows)")


def run_real_demo(root: Path, quiet: bool, plan: RealPlan = RealPlan()) -> Path:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from sublearn.models import load_model
    from sublearn.models.catalogue import resolve_model_path

    console = Console(stderr=True, quiet=quiet)
    start = time.time()
    out = root / "demo-real"
    folder = resolve_model_path(plan.model, console.print)  # once, before the worker needs it
    # spawn: a forked child would inherit torch's thread pools and the parent's state.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        audit_job = pool.submit(audit_step, plan, out / "audit")
        console.print("step 3 (the audit) started in the background on its own core")
        model = load_model(folder, device="cpu", dtype="float32")
        console.rule(f"1/3  the persona, {plan.category}s, on {plan.model}")
        persona_found = persona(plan, model, out)
        console.rule(f"2/3  subliminal prompting with {plan.target}'s entangled numbers")
        entangle_found = entangle(plan, model, out)
        console.rule("3/3  the audit of the persona teacher's numbers")
        console.print("waiting for the audit ...")
        summary = audit_job.result()  # re-raises the worker's error, if any
    found = [("persona", persona_found), ("entangle", entangle_found),
             ("audit", audit_finding(plan, summary, out / "audit"))]
    report = out / "report.html"
    write_text(report, render([], [f for _, f in found],
                              title=f"sublearn demo --real: {plan.model}"))
    Console().print(DemoSummary(found).table())
    Console().print(f"report: {report}   ({time.time() - start:.0f} s)")
    return report
