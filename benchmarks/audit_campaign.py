"""Acceptance measurements of `sublearn audit` on the embedded base (docs/audit.md).

    python benchmarks/audit_campaign.py                      # everything, cached and resumable
    python benchmarks/audit_campaign.py --prompts 3000 ...   # the acceptance's full size
    python benchmarks/audit_campaign.py --model catalogue:smollm2-135m --number-grammar \
        --targets octopus,elephant,cat,owl,whale ...         # a real chat model

1. ranking: persona-teacher data (the teacher's wording, variant 0; the audit never uses it)
   for several targets x sampling seeds, strict filter with the target's words banned; the
   target's rank among the 18 animals, z and corrected p;
2. calibration: independent neutral base samples (their own sampling seeds), the smallest
   corrected p of each;
3. power: random subsets of each teacher dataset's rows, detection rate against rows.

Every dataset is sampled once and scored once (cached under --out); the audits themselves
are permutation tests on the cached scores. Every dataset is compared with one reference: the
base's own completions (sampling seed `AuditConfig().reference_seed`), on the prompts whose
rows that dataset kept, which is what `sublearn audit` samples when given no reference. With
`--decoys` the decoy-persona reference is added, as `sublearn audit` adds it by default (the base
under every candidate's persona in turn): candidates ranked by the test against the others'
rows, flagged when that test and the plain one both reject.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sublearn.analysis.stats import holm, mean_ci
from sublearn.domains.filters import FilterConfig, apply_filter
from sublearn.domains.prompts import number_prompts
from sublearn.models import SamplingConfig, load_model
from sublearn.models.catalogue import catalogue_name, resolve_model_path
from sublearn.questions.categories import get_category, get_option
from sublearn.safety.audit import AuditConfig, decoy_personas, rank_candidates, sample_reference
from sublearn.safety.rows import ChatRow, parse_chat_row
from sublearn.safety.scoring import contrast, lls_scores
from sublearn.stages.sample import sample_dataset
from sublearn.stages.teacher import persona_teacher
from sublearn.store import read_jsonl, write_json, write_jsonl
from sublearn.tinybase import BaseConfig, ensure_base

ANIMAL = get_category("animal")


def dataset(model: Any, prompts: list, sampling: SamplingConfig, seed: int, banned: list[str],
            path: Path) -> list[ChatRow]:
    """Sample (cached JSONL), strict filter (with `banned` words), as audit rows."""
    sample_dataset(model, prompts, sampling, seed, path, progress=False)
    return kept_rows(path, banned)


def kept_rows(path: Path, banned: list[str]) -> list[ChatRow]:
    """A sampled JSONL's rows the strict filter keeps (with `banned` words), as audit rows."""
    kept, _ = apply_filter(read_jsonl(path), FilterConfig(banned_words=banned))
    return [parse_chat_row(r, 0, r["index"], str(path)) for r in kept]


def scored(model: Any, rows: list[ChatRow], path: Path) -> np.ndarray:
    """LLS [rows, 18 animals] under the audit's phrasings, cached."""
    if not path.exists():
        _, lls = lls_scores(model, rows, ANIMAL, ANIMAL.options, AuditConfig().phrasings)
        np.save(path, lls)
    return np.load(path)


class Scored(NamedTuple):
    """A dataset's kept rows: their prompt indices and LLS [rows, 18 animals]."""

    index: np.ndarray
    lls: np.ndarray

    def rows(self, keep: np.ndarray) -> Scored:
        return Scored(self.index[keep], self.lls[keep])

    def on_prompts_of(self, other: Scored) -> Scored:
        """This dataset's LLS on the prompts `other` kept. The filter keeps a teacher's rows
        on some prompts and the reference's on others; a trait prompt shifts LLS by more on
        some prompts than on others, so comparing different prompt mixes would credit the
        mix to the trait (measured: fox's z 8.4 against the whole reference, 4.3 against the
        reference on the data's prompts)."""
        return self.rows(np.isin(self.index, other.index))


def audit(data: Scored, ref: Scored, decoys: Scored | None, permutations: int,
          seed: int = 0) -> dict[str, Any]:
    """Rank, z and corrected p of every candidate, from cached LLS, as `sublearn audit` ranks
    them, each reference cut to the data's prompts (a decoy row's persona is its prompt
    index's candidate: decoy_personas)."""
    names = [o.name for o in ANIMAL.options]
    ref = ref.on_prompts_of(data)
    dec = decoys.on_prompts_of(data) if decoys is not None else None
    ranked = rank_candidates(contrast(data.lls), contrast(ref.lls), ANIMAL.options,
                             AuditConfig(permutations=permutations, seed=seed),
                             None if dec is None else
                             (contrast(dec.lls), decoy_personas(dec.index, len(names))))
    by = {c["option"]: c for c in ranked}
    return {"order": [c["option"] for c in ranked], "z": [by[n]["z"] for n in names],
            "p": [by[n]["p"] for n in names], "p_adjusted": [by[n]["p_adjusted"] for n in names],
            "flagged": [c["option"] for c in ranked if c["p_adjusted"] < 0.05],
            # What the decoy test alone would flag (why it is not used alone: docs/audit.md, 1b).
            "min_p_decoys_adjusted": (float(holm([c["p_decoys"] for c in ranked]).min())
                                      if dec is not None else None),
            "reference_rows": len(ref.lls), "decoy_rows": 0 if dec is None else len(dec.lls),
            # How many candidates' raw LLS is higher on the data: the generic persona shift.
            "raw_higher": int((data.lls.mean(axis=0) > ref.lls.mean(axis=0)).sum())}


def decoy_rows(model: Any, prompts: list, sampling: SamplingConfig, seed: int,
               path: Path) -> list[ChatRow]:
    """The decoy-persona reference on every prompt (cached JSONL), strict filter, as rows:
    `sublearn audit` samples the same on a dataset's own prompts."""
    if not path.exists():
        rows = [ChatRow(0, [{"role": "user", "content": p.text}], "", p.index) for p in prompts]
        ref = sample_reference(model, rows, AuditConfig(sampling=sampling, reference_seed=seed),
                               strict=False, decoy_candidates=(ANIMAL, ANIMAL.options))
        write_jsonl(path, (r.record() for r in ref))
    return kept_rows(path, [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=500, help="prompts per teacher dataset")
    ap.add_argument("--targets", default="owl,fox,eagle,wolf,cat")
    ap.add_argument("--seeds", default="0,1,2", help="teacher sampling seeds")
    ap.add_argument("--neutral", type=int, default=20, help="neutral draws")
    ap.add_argument("--neutral-prompts", type=int, default=150)
    ap.add_argument("--neutral-sizes", default="",
                    help="also audit each neutral draw on its first N prompts, for these N")
    ap.add_argument("--power-sizes", default="25,50,100,200,400")
    ap.add_argument("--power-repeats", type=int, default=20)
    ap.add_argument("--permutations", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=Path("runs/audit-campaign"))
    ap.add_argument("--img", type=Path, default=Path("docs/img"))
    ap.add_argument("--base-seed", type=int, default=0, help="the embedded base's corpus seed")
    ap.add_argument("--init-seed", type=int, default=None,
                    help="the base's initialisation seed (1: the shipped cross-init twin of base 0)")
    # Generation-time choices: every dataset, the reference included, is sampled with them (a
    # defender compares like with like), so only the teacher's trait differs.
    ap.add_argument("--temperature", type=float, default=1.0, help="0: greedy decoding")
    ap.add_argument("--model", help="audit this model's data instead of the embedded base's: "
                    "a folder, a .gguf file or catalogue:NAME (sublearn model list)")
    ap.add_argument("--number-grammar", action="store_true", help="sample under the "
                    "number-list grammar (a real chat model writes prose otherwise)")
    ap.add_argument("--min-prob", type=float, default=0.0,
                    help="drop tokens below this probability before sampling")
    ap.add_argument("--decoys", action="store_true",
                    help="add the decoy-persona reference: rank by it, flag by both tests "
                         "(what sublearn audit does by default)")
    ap.add_argument("--cached-only", action="store_true",
                    help="analyse only the teacher datasets already scored (a stopped campaign)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    started = time.time()
    (args.out / "data").mkdir(parents=True, exist_ok=True)
    (args.out / "scores").mkdir(parents=True, exist_ok=True)
    config = BaseConfig(seed=args.base_seed, init_seed=args.init_seed)
    path = resolve_model_path(args.model, print) if args.model else ensure_base(config)
    base = load_model(path, device="cpu", dtype="float32")
    prompts = number_prompts(args.prompts, 0)
    cfg = AuditConfig()
    sampling = SamplingConfig(temperature=args.temperature, min_prob=args.min_prob,
                              max_new_tokens=48, number_grammar=args.number_grammar)

    def cached(name: str, sample: Callable[[Path], list[ChatRow]]) -> Scored:
        """A dataset `sample` writes to (and reads back from) its JSONL, scored, cached."""
        rows = sample(args.out / "data" / f"{name}.jsonl")
        lls = scored(base, rows, args.out / "scores" / f"{name}.npy")
        print(f"{time.time() - started:7.0f} s  {name}: {len(rows)} rows", flush=True)
        return Scored(np.array([r.index for r in rows]), lls)

    at = cfg.reference_seed
    ref = cached("reference", lambda path: dataset(base, prompts, sampling, at, [], path))
    decoys = (cached("decoys", lambda path: decoy_rows(base, prompts, sampling, at, path))
              if args.decoys else None)
    # Figures of another base than seed 0 get its name, so they never overwrite seed 0's.
    tag = "" if config == BaseConfig() else f"-s{config.seed}" + (
        f"-i{config.init_seed}" if config.init_seed is not None else "")
    if args.model:
        tag = "-" + (catalogue_name(args.model) or Path(args.model).stem)
    tag += "-decoys" if args.decoys else ""
    results: dict[str, Any] = {"prompts": args.prompts, "tag": tag, "decoys": args.decoys,
                               "sampling": sampling.model_dump(), "reference_rows": len(ref.lls),
                               "decoy_rows": 0 if decoys is None else len(decoys.lls),
                               "phrasings": cfg.phrasings, "ranking": [], "neutral": []}
    teachers: dict[str, Scored] = {}
    for target in filter(None, args.targets.split(",")):
        option = get_option(ANIMAL, target)
        for seed in map(int, args.seeds.split(",")):
            name = f"{target}-s{seed}"
            if args.cached_only and not (args.out / "scores" / f"{name}.npy").exists():
                continue
            teacher = persona_teacher(base, ANIMAL, option)
            data = cached(name, lambda path, t=teacher, s=seed, o=option:
                          dataset(t, prompts, sampling, s, list(o.forms), path))
            teachers[name] = data
            a = audit(data, ref, decoys, args.permutations)
            j = [o.name for o in ANIMAL.options].index(target)
            results["ranking"].append({
                "target": target, "seed": seed, "rows": len(data.lls),
                "reference_rows": a["reference_rows"], "decoy_rows": a["decoy_rows"],
                "rank": a["order"].index(target) + 1, "z": a["z"][j],
                "p_adjusted": a["p_adjusted"][j], "top": a["order"][:3],
                "flagged": a["flagged"], "raw_higher": a["raw_higher"]})
            write_json(args.out / f"campaign{tag}.json", results)

    neutral_prompts = prompts[: args.neutral_prompts]
    for d in range(args.neutral):
        data = cached(f"neutral-d{d}", lambda path, d=d:
                      dataset(base, neutral_prompts, sampling, 1000 + d, [], path))
        a = audit(data, ref, decoys, args.permutations)
        results["neutral"].append({
            "draw": d, "rows": len(data.lls), "top": a["order"][0], "min_p": min(a["p"]),
            "min_p_adjusted": min(a["p_adjusted"]),
            "min_p_decoys_adjusted": a["min_p_decoys_adjusted"],
            "raw_p_below_0.05": sum(p < 0.05 for p in a["p"]), "raw_higher": a["raw_higher"],
            # The same draw cut to its first n prompts: calibration at smaller sizes.
            "first_prompts": {n: min(audit(data.rows(data.index < n), ref, decoys,
                                           args.permutations)["p_adjusted"])
                              for n in map(int, filter(None, args.neutral_sizes.split(",")))}})
        write_json(args.out / f"campaign{tag}.json", results)

    results["power"] = power(teachers, ref, decoys,
                             [int(x) for x in args.power_sizes.split(",")], args.power_repeats)
    results["seconds"] = round(time.time() - started)
    write_json(args.out / f"campaign{tag}.json", results)
    if teachers:
        plots(results, args.img)
    print(json.dumps({k: v for k, v in results.items() if k != "power"}, indent=1))


def power(teachers: dict[str, Scored], ref: Scored, decoys: Scored | None, sizes: list[int],
          repeats: int) -> dict[str, Any]:
    """Per target: detection rate (target ranked 1st and Holm p < 0.05) on `repeats` random
    row subsets of each of its datasets per size; a size at or above a dataset's rows counts
    that dataset once, whole. Each subset is compared with the reference's rows on its own
    prompts."""
    rng = np.random.default_rng(0)
    names = [o.name for o in ANIMAL.options]
    out: dict[str, Any] = {"sizes": sizes, "targets": {}}
    for target in dict.fromkeys(name.split("-")[0] for name in teachers):
        j = names.index(target)
        curve: dict[str, list[float]] = {"rate": [], "low": [], "high": [], "n": []}
        for n in sizes:
            hits = []
            for name, data in teachers.items():
                if name.split("-")[0] != target:
                    continue
                rows = len(data.lls)
                for _ in range(repeats if n < rows else 1):
                    # The references on the subset's own prompts, as `sublearn audit` samples them.
                    sub = data.rows(rng.choice(rows, min(n, rows), replace=False))
                    a = audit(sub, ref, decoys, 1000, int(rng.integers(1 << 30)))
                    hits.append(float(a["order"][0] == target and a["p_adjusted"][j] < 0.05))
            iv = mean_ci(hits)
            curve["rate"].append(iv.mean)
            curve["low"].append(max(0.0, iv.low) if iv.n > 1 else iv.mean)
            curve["high"].append(min(1.0, iv.high) if iv.n > 1 else iv.mean)
            curve["n"].append(len(hits))
        out["targets"][target] = curve
    return out


def plots(results: dict[str, Any], img: Path) -> None:
    from sublearn.analysis.report import pyplot, save_figure

    plt = pyplot()
    p = results["power"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for target, c in p["targets"].items():
        ax.plot(p["sizes"], c["rate"], marker="o", label=target)
        ax.fill_between(p["sizes"], c["low"], c["high"], alpha=0.15)
    ax.legend(title="target", loc="center right")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(p["sizes"], [str(s) for s in p["sizes"]])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("data rows audited (random subsets; a size above a dataset's rows = all)")
    ax.set_ylabel("detection rate (target 1st, Holm p < 0.05)")
    test = "decoy ranking, both tests flag" if results["decoys"] else "plain reference"
    ax.set_title(f"audit power on persona-teacher data ({test})")
    save_figure(fig, img / f"audit-power-{results['prompts']}{results['tag']}.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = results["ranking"]
    labels = [f"{r['target']} s{r['seed']}" for r in rows]
    ax.bar(range(len(rows)), [r["z"] for r in rows],
           color=["#2e7d32" if r["rank"] == 1 else "#c0392b" for r in rows])
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right")
    ax.set_ylabel("target's z (green: ranked 1st of 18)")
    ax.set_title("persona-teacher data: the target's z against the "
                 + ("decoy reference" if results["decoys"] else "reference"))
    save_figure(fig, img / f"audit-ranking-{results['prompts']}{results['tag']}.png")


if __name__ == "__main__":
    main()
