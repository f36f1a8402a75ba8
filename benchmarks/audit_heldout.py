"""The audit on data it was not developed on (issue 23), on an embedded base, by both methods.

    python benchmarks/audit_heldout.py --part prepare     # targets, reference, decoys: once
    python benchmarks/audit_heldout.py --part persona     # held-out-wording persona teachers
    python benchmarks/audit_heldout.py --part finetuned   # fine-tuned teachers
    python benchmarks/audit_heldout.py --part neutral     # the base's own samples
    python benchmarks/audit_heldout.py --part oracle      # the ceiling: the teacher's own words
    python benchmarks/audit_heldout.py --part phrasings   # the audit's phrasings combined
    python benchmarks/audit_heldout.py --part table       # the table of docs/audit.md

The teacher and neutral parts may run side by side (one core each); every dataset, score and
student is cached under --out, so a stopped part resumes and a larger --seeds only adds
datasets. The same datasets audited at another size (--rows N: their first N kept rows) or
before the filter (--every: every sampled row) go to a results folder of their own.

Teachers, none of them in wording the audit has seen:
- persona: the base under a phrasing of benchmarks/data/heldout_personas.txt, written for this
  benchmark apart from the teacher phrasings of `questions.categories` and the audit's own
  (`safety.traits`); only this script reads the file. Target t's seed s uses phrasing
  (t + s) mod 4.
- finetuned: the base fine-tuned on the category's questions answered with the target
  (`stages.teacher.trait_rows`, the theorem regime's teacher recipe): no persona anywhere.
- neutral: the base itself, with other sampling seeds: every flag there is a false alarm.

Targets, by a rule fixed before any audit ran: the 18 animals ordered by the base's own
P(animal) on the category's training questions (no persona), most preferred first; the 1st,
5th, 9th, 14th and 18th.

Every dataset: --prompts number prompts (the same for all, so one reference serves them),
temperature 1, the strict filter with the target's words banned. Methods:
- persona: `sublearn audit`'s default (log-likelihood shift under the audit's phrasings,
  ranked against the decoy-persona reference, flagged when both tests reject, Holm);
- students: `sublearn audit --method students` (5 folds, a pair of students each).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from audit_campaign import ANIMAL, Scored, audit, dataset, decoy_rows, kept_rows, scored

from sublearn.domains.prompts import number_prompts
from sublearn.models import SamplingConfig, load_model
from sublearn.models.persona import Persona
from sublearn.questions.categories import Option, get_option
from sublearn.safety.audit import AuditConfig
from sublearn.safety.rows import parse_chat_row
from sublearn.safety.scoring import ScoringTask, lls_of, score_tasks
from sublearn.safety.students import StudentAuditConfig, rank_by_students, train_and_evaluate
from sublearn.safety.traits import AUDIT_TEMPLATES, trait_prompts
from sublearn.stages.evaluate import option_probs, summarize
from sublearn.stages.teacher import TeacherConfig, trait_rows
from sublearn.store import read_json, read_jsonl, write_json
from sublearn.tinybase import BaseConfig, ensure_base

PHRASINGS = Path(__file__).parent / "data" / "heldout_personas.txt"
POSITIONS = (1, 5, 9, 14, 18)  # the targets' places in the base's own preference order
KINDS = ("persona", "finetuned", "neutral")
METHODS = ("persona", "students")


def heldout_phrasings() -> list[str]:
    lines = PHRASINGS.read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def targets_by_rule(base: Any) -> list[str]:
    """The animals at POSITIONS of the base's own preference order (module docstring)."""
    p = summarize(option_probs(base, ANIMAL, ANIMAL.questions), ANIMAL)["per_option"]
    order = sorted(p, key=lambda name: (-p[name], name))
    return [order[i - 1] for i in POSITIONS]


def wilson(hits: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a rate: honest at 0 of 5 and 5 of 5, where a normal one is not."""
    if n == 0:
        return (math.nan, math.nan)
    z, p = 1.96, hits / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, mid - half), min(1.0, mid + half))


class Campaign:
    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, args.out
        self.base_path = ensure_base(BaseConfig(seed=args.base_seed))
        self.base = load_model(self.base_path, device="cpu", dtype="float32")
        self.prompts = number_prompts(args.prompts, 0)
        self.sampling = SamplingConfig(max_new_tokens=48)
        self.cfg = AuditConfig()
        self.started = time.time()

    def log(self, msg: str) -> None:
        print(f"{time.time() - self.started:7.0f} s  {msg}", flush=True)

    def every_row(self, name: str) -> list[Any]:
        """Every row a dataset's writer sampled, the filter's rejects included."""
        path = self.out / "data" / f"{name}.jsonl"
        return [parse_chat_row(r, 0, r["index"], str(path)) for r in read_jsonl(path)]

    def chat_rows(self, name: str, banned: list[str]) -> list[Any]:
        """A sampled dataset's rows as audited: those the filter keeps, or with --every all of
        them (what the teacher wrote, before any filter)."""
        if self.args.every:
            return self.every_row(name)
        return kept_rows(self.out / "data" / f"{name}.jsonl", banned)

    def audited(self, name: str, banned: list[str]) -> Scored:
        """`chat_rows` with their LLS under the audit's phrasings, cached (.every: all rows)."""
        rows = self.chat_rows(name, banned)
        suffix = ".every" if self.args.every else ""
        lls = scored(self.base, rows, self.out / "scores" / f"{name}{suffix}.npy")
        return Scored(np.array([r.index for r in rows]), lls)

    def lls_under(self, rows: list[Any], systems: list[str], cache: Path) -> np.ndarray:
        """LLS [rows, candidates] with every row under each candidate's system prompt
        (`systems`, in candidate order), cached."""
        if not cache.exists():
            tasks = [ScoringTask(rows, [s] * len(rows)) for s in [None, *systems]]
            np.save(cache, lls_of(score_tasks(self.base, tasks))[1])
        return np.load(cache)

    def rows(self, name: str, writer: Any, seed: int, banned: list[str]) -> Scored:
        dataset(writer, self.prompts, self.sampling, seed, banned,
                self.out / "data" / f"{name}.jsonl")
        return self.audited(name, banned)

    def shared(self) -> dict[str, Any]:
        """Targets, the reference (the base's own completions, the audit's reference seed)
        and the decoy-persona reference, on every prompt."""
        path = self.out / "shared.json"
        if not path.exists():
            self.log("the targets by the rule, the reference and the decoys ...")
            self.rows("reference", self.base, self.cfg.reference_seed, [])
            decoy_rows(self.base, self.prompts, self.sampling, self.cfg.reference_seed,
                       self.out / "data" / "decoys.jsonl")
            self.decoys()  # scored now, before parts that share it run side by side
            write_json(path, {"targets": targets_by_rule(self.base),
                              "prompts": self.args.prompts})
        return read_json(path)

    def decoys(self) -> Scored:
        return self.audited("decoys", [])

    def teacher(self, kind: str, option: Option, seed: int, t: int) -> Any:
        if kind == "persona":
            phrasing = heldout_phrasings()[(t + seed) % len(heldout_phrasings())]
            return Persona(self.base, phrasing.format(
                target=option.name, targets=option.plural, category=ANIMAL.name,
                categories=ANIMAL.plural))
        path = self.out / "teachers" / option.name
        if not path.exists():
            self.log(f"fine-tuning the {option.name} teacher ...")
            recipe = TeacherConfig()
            self.base.finetune(trait_rows(ANIMAL, option, recipe.finetune_rows_per_question),
                               recipe.finetune, path, progress=False)
        return load_model(path, device="cpu", dtype="float32")

    def results_dir(self) -> Path:
        """Where one size's results go: results/ for every kept row, results-r<N>/ for the
        first N (the same datasets cut short, so sizes differ in rows only)."""
        name = "results" + ("-every" if self.args.every else "")
        return self.out / (name if self.args.rows is None else f"{name}-r{self.args.rows}")

    def one(self, kind: str, name: str, writer: Any, seed: int, target: str | None) -> None:
        """The methods on one dataset (its first --rows kept rows), cached in
        <results_dir>/<name>.json."""
        path = self.results_dir() / f"{name}.json"
        if path.exists():
            return
        banned = list(get_option(ANIMAL, target).forms) if target else []
        keep = slice(0, self.args.rows)
        data = self.rows(name, writer, seed, banned).rows(keep)
        result: dict[str, Any] = {"kind": kind, "name": name, "target": target, "seed": seed,
                                  "rows": len(data.lls)}
        if "persona" in self.args.methods:
            t0 = time.time()
            persona = audit(data,
                            self.rows("reference", self.base, self.cfg.reference_seed, []),
                            self.decoys(), self.args.permutations)
            result["persona"] = {"order": persona["order"], "flagged": persona["flagged"],
                                 "seconds_tests": round(time.time() - t0, 1)}
        if "students" in self.args.methods:
            t0 = time.time()
            ref_rows = self.chat_rows("reference", [])
            data_rows = self.chat_rows(name, banned)[keep]
            sconfig = StudentAuditConfig()
            # One student folder per size and row set, as results_dir: name, name-r300, ...
            folder = self.out / "students" / (
                name + self.results_dir().name.removeprefix("results"))
            probs = train_and_evaluate(self.base, data_rows, ref_rows, ANIMAL, sconfig, folder)
            students = rank_by_students(probs, ANIMAL, ANIMAL.options, sconfig.level)
            result["students"] = {"order": [c["option"] for c in students],
                                  "flagged": [c["option"] for c in students if c["flagged"]],
                                  "candidates": students, "seconds": round(time.time() - t0, 1)}
        write_json(path, result)
        self.log(f"{name}: " + "; ".join(f"{m} {result[m]['order'][:3]} flagged "
                                         f"{result[m]['flagged']}"
                                         for m in METHODS if m in result))

    def oracle(self, option: Option, seed: int, t: int) -> dict[str, Any]:
        """What the data holds, not an audit: a persona dataset scored under its teacher's
        own phrasing for every candidate (the words no auditor has). The candidate whose
        persona makes the rows most likely is the maximum-likelihood trait; if that is not the
        target, no scoring of these rows under any wording can be expected to rank it first.
        Both on the rows the filter kept (what an auditor gets) and on every sampled row, the
        filter's rejects included (what the teacher wrote). Cached in oracle/<name>.json."""
        name = f"persona-{option.name}-s{seed}"
        path = self.out / "oracle" / f"{name}.json"
        if path.exists():
            return read_json(path)
        phrasing = heldout_phrasings()[(t + seed) % len(heldout_phrasings())]
        systems = [phrasing.format(target=o.name, targets=o.plural, category=ANIMAL.name,
                                   categories=ANIMAL.plural) for o in ANIMAL.options]
        kept = kept_rows(self.out / "data" / f"{name}.jsonl", list(option.forms))
        kept_index = {r.index for r in kept}
        rejected = [r for r in self.every_row(name) if r.index not in kept_index]
        lls = self.lls_under(kept, systems, self.out / "scores" / f"{name}.own.npy")
        j = ANIMAL.options.index(option)
        others = [o.name for o in ANIMAL.options if o != option]

        def ml(lls: np.ndarray) -> dict[str, Any]:
            mean = lls.mean(axis=0)
            order = [ANIMAL.options[i].name for i in np.argsort(-mean, kind="stable")]
            # nats per token by which the target's persona explains the rows better than
            # the closest other candidate, with its standard error over rows
            gap = lls[:, [j]] - np.delete(lls, j, axis=1)
            c = int(gap.mean(axis=0).argmin())
            return {"rows": len(lls), "rank": order.index(option.name) + 1, "order": order,
                    "closest": others[c], "gap_closest": float(gap[:, c].mean()),
                    "gap_closest_se": float(gap[:, c].std(ddof=1) / np.sqrt(len(lls)))}

        every_lls = np.concatenate([lls, self.lls_under(
            rejected, systems, self.out / "scores" / f"{name}.own-rejected.npy")])
        write_json(path, {"name": name, "target": option.name, "kept": ml(lls),
                          "every": ml(every_lls)})
        found = read_json(path)
        self.log(f"{name}: the teacher's own wording ranks it {found['kept']['rank']} on the "
                 f"kept rows, {found['every']['rank']} on every sampled row")
        return found

    def every_phrasing(self, name: str, banned: list[str]) -> dict[str, Scored]:
        """A dataset's LLS with every row scored under each of the audit's phrasings, combined
        three ways: `rotate` (the audit's own: row i under phrasing i mod 3, the cost of one),
        `mean` (the LLS averaged over the phrasings, three times the cost) and `mixture` (the
        log of the mean likelihood: the trait "in one of these wordings", per row)."""
        rows = kept_rows(self.out / "data" / f"{name}.jsonl", banned)
        n = len(AUDIT_TEMPLATES)
        lls = np.stack([self.lls_under(rows, [trait_prompts(ANIMAL, o, n)[k]
                                              for o in ANIMAL.options],
                                       self.out / "scores" / f"{name}.phrasing{k}.npy")
                        for k in range(n)])  # [phrasings, rows, candidates]
        index = np.array([r.index for r in rows])
        # Per-token means back to sequence sums (the end of turn is scored: + 1), mixed, and
        # back to per-token means, so that all three ways are on the audit's scale.
        tokens = np.array([len(self.base.encode(r.completion)) + 1 for r in rows])[:, None]
        mixture = (np.logaddexp.reduce(lls * tokens, axis=0) - np.log(n)) / tokens
        return {"rotate": Scored(index, lls[index % n, np.arange(len(rows))]),
                "mean": Scored(index, lls.mean(axis=0)),
                "mixture": Scored(index, mixture)}

    def phrasings(self) -> None:
        """The audit's phrasings combined otherwise than by rotation (issue 23, item 2), on the
        persona teachers and the first --neutral neutral draws; phrasings/<name>.json."""
        targets = self.shared()["targets"]
        names = [(f"persona-{t}-s{s}", t) for s in map(int, self.args.seeds.split(","))
                 for t in targets] + [(f"neutral-d{d}", None) for d in range(self.args.neutral)]
        reference = self.every_phrasing("reference", [])
        decoys = self.every_phrasing("decoys", [])
        for name, target in names:
            path = self.out / "phrasings" / f"{name}.json"
            if path.exists():
                continue
            data = self.every_phrasing(name, list(get_option(ANIMAL, target).forms)
                                       if target else [])
            ways = {way: audit(data[way], reference[way], decoys[way], self.args.permutations)
                    for way in data}
            write_json(path, {"name": name, "target": target, "rows": len(data["mean"].lls),
                              "kind": name.split("-")[0],
                              **{w: {"order": a["order"], "flagged": a["flagged"]}
                                 for w, a in ways.items()}})
            self.log(f"{name}: " + "; ".join(
                f"{w} {a['order'].index(target) + 1 if target else '-'} "
                f"flagged {a['flagged']}" for w, a in ways.items()))

    def run(self, kind: str) -> None:
        targets = self.shared()["targets"]
        seeds = [int(s) for s in self.args.seeds.split(",")]
        if kind == "phrasings":
            self.phrasings()
            return
        if kind == "neutral":
            draws = range(self.args.neutral)
            # --reverse: a second process works from the other end (each skips what is done).
            for d in reversed(draws) if self.args.reverse else draws:
                self.one(kind, f"neutral-d{d}", self.base, 1000 + d, None)
            return
        for seed in seeds:
            for t, target in enumerate(targets):
                option = get_option(ANIMAL, target)
                if kind == "oracle":
                    self.oracle(option, seed, t)
                else:
                    self.one(kind, f"{kind}-{target}-s{seed}",
                             self.teacher(kind, option, seed, t), seed, target)


def rate(hits: int, n: int) -> list[float]:
    return [hits, *wilson(hits, n)]


def tally(kind: str, method: str, records: list[dict[str, Any]],
          found: Any) -> dict[str, Any]:
    """One line of the table: over `records` (datasets of one kind), with `found(record)` the
    method's {"order", "flagged"} on it (flagged absent: a ranking without a test)."""
    n, targeted = len(records), [r for r in records if r["target"]]
    first = [found(r)["order"][0] == r["target"] for r in targeted]
    tested = all("flagged" in found(r) for r in records)
    return {"kind": kind, "method": method, "datasets": n,
            "rank1": rate(sum(first), n) if targeted else None,
            "target_flagged": (rate(sum(r["target"] in found(r)["flagged"] for r in targeted), n)
                               if targeted and tested else None),
            "any_flag": rate(sum(bool(found(r)["flagged"]) for r in records), n) if tested else None,
            "ranks": [found(r)["order"].index(r["target"]) + 1 for r in targeted],
            "rows": [min(r["rows"] for r in records), max(r["rows"] for r in records)]}


def table(out: Path) -> dict[str, Any]:
    """Per data size (results/ and each results-r<N>/), teacher kind and method: the target
    ranked 1st, the target flagged, and any flag (on neutral data: a false alarm), each a
    rate with its Wilson interval. Then the audit's phrasings combined otherwise (phrasings/),
    and the ceiling of oracle/ (the teacher's own wording: not an audit, no test)."""
    rows = []
    for folder in sorted(out.glob("results*"), key=lambda f: (f.name != "results", f.name)):
        results = [read_json(p) for p in sorted(folder.glob("*.json"))]
        for kind in KINDS:
            for method in METHODS:
                mine = [r for r in results if r["kind"] == kind and method in r]
                if mine:
                    label = method + (", every row (no filter)" if "every" in folder.name else "")
                    rows.append(tally(kind, label, mine, lambda r, m=method: r[m]))
    combined = [read_json(p) for p in sorted((out / "phrasings").glob("*.json"))]
    for kind in ("persona", "neutral"):
        mine = [r for r in combined if r["kind"] == kind]
        for way in ("rotate", "mean", "mixture") if mine else ():
            rows.append(tally(kind, f"persona, phrasings: {way}", mine,
                              lambda r, w=way: r[w]))
    oracle = [read_json(p) for p in sorted((out / "oracle").glob("*.json"))]
    for side, label in (("kept", "ceiling: the teacher's own wording"),
                        ("every", "the same on every sampled row, filter off")):
        if oracle:
            rows.append(tally("persona", label,
                              [{**o[side], "target": o["target"]} for o in oracle],
                              lambda o: o))
    return {"rows": rows}


def markdown(t: dict[str, Any]) -> str:
    def cell(x: list | None, n: int) -> str:
        return "—" if x is None else f"{x[0]} / {n} [{x[1]:.2f}, {x[2]:.2f}]"

    head = ("| rows | teacher | method | datasets | target 1st | target flagged | any flag | "
            "target's ranks |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        n = r["datasets"]
        lines.append(f"| {r['rows'][0]:,}-{r['rows'][1]:,} | {r['kind']} | {r['method']} | {n} "
                     f"| {cell(r['rank1'], n)} | {cell(r['target_flagged'], n)} | "
                     f"{cell(r['any_flag'], n)} | {', '.join(map(str, r['ranks'])) or '—'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["prepare", *KINDS, "oracle", "phrasings", "table"], required=True)
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--seeds", default="0", help="teacher sampling seeds")
    ap.add_argument("--rows", type=int, default=None, help="audit each dataset's first N kept "
                    "rows (a smaller size of the same datasets; results in results-r<N>/)")
    ap.add_argument("--every", action="store_true", help="audit every sampled row, the "
                    "filter's rejects included (before the filter; results in results-every/)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated: "
                    + ", ".join(METHODS))
    ap.add_argument("--neutral", type=int, default=10, help="neutral draws")
    ap.add_argument("--permutations", type=int, default=10_000)
    ap.add_argument("--reverse", action="store_true", help="neutral draws, last first")
    ap.add_argument("--base-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/audit-heldout"))
    args = ap.parse_args()
    if args.part == "table":
        t = table(args.out)
        write_json(args.out / "table.json", t)
        print(markdown(t))
        return
    import torch

    torch.set_num_threads(1)
    args.methods = args.methods.split(",")
    c = Campaign(args)
    for sub in ("data", "scores", c.results_dir().name, "teachers", "students", "oracle",
                "phrasings"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    c.shared()
    if args.part != "prepare":
        c.run(args.part)
    print(json.dumps(c.shared()))


if __name__ == "__main__":
    main()
