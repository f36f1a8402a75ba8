"""The audit on data it was not developed on (issue 23), on an embedded base, by both methods.

    python benchmarks/audit_heldout.py --part prepare     # targets, reference, decoys: once
    python benchmarks/audit_heldout.py --part persona     # held-out-wording persona teachers
    python benchmarks/audit_heldout.py --part finetuned   # fine-tuned teachers
    python benchmarks/audit_heldout.py --part neutral     # the base's own samples
    python benchmarks/audit_heldout.py --part table       # the table of docs/audit.md

The three middle parts may run side by side (one core each); every dataset, score and student
is cached under --out, so a stopped part resumes and a larger --seeds only adds datasets.

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
from sublearn.safety.students import StudentAuditConfig, rank_by_students, train_and_evaluate
from sublearn.stages.evaluate import option_probs, summarize
from sublearn.stages.teacher import TeacherConfig, trait_rows
from sublearn.store import read_json, write_json
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

    def rows(self, name: str, writer: Any, seed: int, banned: list[str]) -> Scored:
        path = self.out / "data" / f"{name}.jsonl"
        rows = dataset(writer, self.prompts, self.sampling, seed, banned, path)
        lls = scored(self.base, rows, self.out / "scores" / f"{name}.npy")
        return Scored(np.array([r.index for r in rows]), lls)

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
        rows = kept_rows(self.out / "data" / "decoys.jsonl", [])
        return Scored(np.array([r.index for r in rows]),
                      scored(self.base, rows, self.out / "scores" / "decoys.npy"))

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

    def one(self, kind: str, name: str, writer: Any, seed: int, target: str | None) -> None:
        """Both methods on one dataset, cached in results/<name>.json."""
        path = self.out / "results" / f"{name}.json"
        if path.exists():
            return
        banned = list(get_option(ANIMAL, target).forms) if target else []
        data = self.rows(name, writer, seed, banned)
        t0 = time.time()
        persona = audit(data, self.rows("reference", self.base, self.cfg.reference_seed, []),
                        self.decoys(), self.args.permutations)
        t1 = time.time()
        ref_rows = kept_rows(self.out / "data" / "reference.jsonl", [])
        data_rows = kept_rows(self.out / "data" / f"{name}.jsonl", banned)
        sconfig = StudentAuditConfig()
        probs = train_and_evaluate(self.base, data_rows, ref_rows, ANIMAL, sconfig,
                                   self.out / "students" / name)
        students = rank_by_students(probs, ANIMAL, ANIMAL.options, sconfig.level)
        t2 = time.time()
        order = [c["option"] for c in students]
        result = {
            "kind": kind, "name": name, "target": target, "seed": seed,
            "rows": len(data.lls),
            "persona": {"order": persona["order"], "flagged": persona["flagged"],
                        "seconds_tests": round(t1 - t0, 1)},
            "students": {"order": order, "flagged": [c["option"] for c in students
                                                     if c["flagged"]],
                         "candidates": students, "seconds": round(t2 - t1, 1)},
        }
        write_json(path, result)
        self.log(f"{name}: persona {persona['order'][:3]} flagged {persona['flagged']}; "
                 f"students {order[:3]} flagged {result['students']['flagged']}")

    def run(self, kind: str) -> None:
        targets = self.shared()["targets"]
        seeds = [int(s) for s in self.args.seeds.split(",")]
        if kind == "neutral":
            draws = range(self.args.neutral)
            # --reverse: a second process works from the other end (each skips what is done).
            for d in reversed(draws) if self.args.reverse else draws:
                self.one(kind, f"neutral-d{d}", self.base, 1000 + d, None)
            return
        for seed in seeds:
            for t, target in enumerate(targets):
                option = get_option(ANIMAL, target)
                self.one(kind, f"{kind}-{target}-s{seed}",
                         self.teacher(kind, option, seed, t), seed, target)


def table(out: Path) -> dict[str, Any]:
    """Per teacher kind and method: the target ranked 1st, the target flagged, and any flag
    (on neutral data: a false alarm), each a rate with its Wilson interval."""
    results = [read_json(p) for p in sorted((out / "results").glob("*.json"))]
    rows = []
    for kind in KINDS:
        mine = [r for r in results if r["kind"] == kind]
        for method in METHODS:
            n = len(mine)
            first = sum(r[method]["order"][0] == r["target"] for r in mine if r["target"])
            flagged = sum(r["target"] in r[method]["flagged"] for r in mine if r["target"])
            anyflag = sum(bool(r[method]["flagged"]) for r in mine)
            ranks = [r[method]["order"].index(r["target"]) + 1 for r in mine if r["target"]]
            rows.append({"kind": kind, "method": method, "datasets": n,
                         "rank1": [first, *wilson(first, n)] if kind != "neutral" else None,
                         "target_flagged": ([flagged, *wilson(flagged, n)]
                                            if kind != "neutral" else None),
                         "any_flag": [anyflag, *wilson(anyflag, n)],
                         "ranks": ranks,
                         "rows": [r["rows"] for r in mine]})
    return {"rows": rows, "datasets": len(results)}


def markdown(t: dict[str, Any]) -> str:
    def rate(x: list | None) -> str:
        return "—" if x is None else f"{x[0]} / {{n}} [{x[1]:.2f}, {x[2]:.2f}]"

    head = ("| teacher | method | datasets | target 1st | target flagged | any flag | "
            "target's ranks |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        n = r["datasets"]
        lines.append(f"| {r['kind']} | {r['method']} | {n} | "
                     f"{rate(r['rank1']).format(n=n)} | {rate(r['target_flagged']).format(n=n)}"
                     f" | {rate(r['any_flag']).format(n=n)} | "
                     f"{', '.join(map(str, r['ranks'])) or '—'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["prepare", *KINDS, "table"], required=True)
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--seeds", default="0", help="teacher sampling seeds")
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
    for sub in ("data", "scores", "results", "teachers", "students"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    c = Campaign(args)
    c.shared()
    if args.part != "prepare":
        c.run(args.part)
    print(json.dumps(c.shared()))


if __name__ == "__main__":
    main()
