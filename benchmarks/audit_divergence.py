"""Divergence-token statistics (`sublearn audit --counterfactual`) on the cache of
benchmarks/audit_campaign.py, behind docs/audit.md ("Divergence tokens").

    python benchmarks/audit_divergence.py [--campaign runs/audit-campaign] [--out /tmp/cf]

Every dataset is filtered as the campaign filters it (strict number rule, the target's words
banned) and written to --out, so `sublearn audit` can be run on the same rows; each is scored
once under the counterfactual traits (the audit's phrasings), and the statistics are computed
for every pair of traits (and all of them) and every share of divergence positions, against
the campaign's reference restricted to the dataset's own prompts ("matched": what `sublearn
audit` samples itself, same seed) and against the whole reference ("whole": 400 prompts):

1. teacher data (seed 0) of each trait;
2. neutral draws (the campaign's: sampling seeds 1000+, the first 100 prompts), also against
   the next draw (same prompts, independent dice): how often the smallest Holm-corrected p
   falls below 0.05.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.domains.filters import FilterConfig, apply_filter
from sublearn.models import load_model
from sublearn.questions.categories import get_category, get_option
from sublearn.safety.audit import AuditConfig
from sublearn.safety.divergence import divergence_summary, row_divergence
from sublearn.safety.rows import ChatRow, parse_chat_row
from sublearn.safety.scoring import token_logprobs
from sublearn.store import read_jsonl, write_jsonl
from sublearn.tinybase import BaseConfig, ensure_base

ANIMAL = get_category("animal")


def filtered(source: Path, banned: list[str], out: Path) -> list[ChatRow]:
    kept, _ = apply_filter(read_jsonl(source), FilterConfig(banned_words=banned))
    write_jsonl(out, kept)
    return [parse_chat_row(r, 0, r["index"], str(source)) for r in kept]


def statistics(data: list[np.ndarray], ref: list[np.ndarray], traits: list[str],
               groups: list[tuple[str, ...]], shares: list[float],
               permutations: int) -> list[dict[str, Any]]:
    """The divergence summary of every group of traits and share (rows: data then ref)."""
    out = []
    for group in groups:
        idx = [traits.index(t) for t in group]
        for share in shares:
            rows = row_divergence([x[idx] for x in data + ref], list(group), share)
            # The audit's divergence test draws with its seed + 2 (safety.audit.run_audit).
            cfg = AuditConfig(divergence_share=share, permutations=permutations)
            out.append(divergence_summary(rows, len(data), share, permutations,
                                          cfg.seed + 2))
    return out


Scored = tuple[list[ChatRow], list[np.ndarray]]


def on_prompts(ref: Scored, data: Scored) -> list[np.ndarray]:
    """The reference rows on the data's prompts."""
    used = {r.index for r in data[0]}
    return [lp for r, lp in zip(*ref, strict=True) if r.index in used]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--campaign", type=Path, default=Path("runs/audit-campaign"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/cf"))
    ap.add_argument("--traits", default="fox,wolf,owl")
    ap.add_argument("--shares", default="0.02,0.1,0.3,1")
    ap.add_argument("--neutral", type=int, default=20)
    ap.add_argument("--permutations", type=int, default=2000)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    traits = args.traits.split(",")
    options = [get_option(ANIMAL, t) for t in traits]
    shares = [float(s) for s in args.shares.split(",")]
    groups = [*itertools.combinations(traits, 2), tuple(traits)]
    model = load_model(ensure_base(BaseConfig(seed=0)), device="cpu", dtype="float32")
    src = args.campaign / "data"
    args.out.mkdir(parents=True, exist_ok=True)

    def scored(name: str, banned: list[str]) -> Scored:
        rows = filtered(src / f"{name}.jsonl", banned, args.out / f"{name}.jsonl")
        return rows, token_logprobs(model, rows, ANIMAL, options, AuditConfig().phrasings)

    def run(data: Scored, ref: list[np.ndarray]) -> list[dict[str, Any]]:
        return statistics(data[1], ref, traits, groups, shares, args.permutations)

    ref = scored("reference", [])
    results: dict[str, Any] = {"reference_rows": len(ref[0]), "teachers": {}, "neutral": []}
    for t, o in zip(traits, options, strict=True):
        data = scored(f"{t}-s0", list(o.forms))
        matched = on_prompts(ref, data)
        results["teachers"][t] = {"rows": len(data[0]), "matched_rows": len(matched),
                                  "matched": run(data, matched), "whole": run(data, ref[1])}
        for against in ("matched", "whole"):
            for s in results["teachers"][t][against]:
                print(f"{t} ({len(data[0])} rows) vs {against} reference, "
                      f"{','.join(s['counterfactual'])}, share {s['share']}: " + "; ".join(
                          f"{c['trait']} {100 * c['data_share']:.1f}%/"
                          f"{100 * c['reference_share']:.1f}% z {c['z']:.2f} "
                          f"p_adj {c['p_adjusted']:.4f}" for c in s["traits"]), flush=True)
    draws = [scored(f"neutral-d{d}", []) for d in range(args.neutral)]
    for d, data in enumerate(draws):
        nxt = draws[(d + 1) % len(draws)]
        results["neutral"].append({
            against: [min(c["p_adjusted"] for c in s["traits"]) for s in run(data, r)]
            for against, r in (("matched", on_prompts(ref, data)), ("whole", ref[1]),
                               ("next draw", nxt[1]))})
    for k, (g, s) in enumerate(itertools.product(groups, shares)):
        alarms = {against: sum(draw[against][k] < 0.05 for draw in results["neutral"])
                  for against in results["neutral"][0]}
        print(f"neutral, {','.join(g)}, share {s}: draws of {len(draws)} with a Holm p < 0.05: "
              + ", ".join(f"{n} against {a}" for a, n in alarms.items()))
    (args.out / "divergence.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
