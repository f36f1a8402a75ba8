"""Two side checks behind docs/audit.md, on the cache of benchmarks/audit_campaign.py.

    python benchmarks/audit_checks.py [--out runs/audit-campaign]

1. How strongly each campaign teacher has its trait: mean P(target) over 3 held-out
   questions, renormalised over the 18 animals, for the base and under the teacher's persona.
2. Calibration of the row permutation test beyond the campaign's setting: each neutral draw
   against the reference restricted to prompts the draw does not use, and against the next
   neutral draw (same prompts, independent dice); the raw p-values of all 18 candidates.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sublearn.analysis.stats import permutation_test
from sublearn.domains.filters import FilterConfig, apply_filter
from sublearn.models import load_model
from sublearn.questions.categories import get_category, get_option
from sublearn.safety.scoring import contrast
from sublearn.stages.evaluate import option_probs
from sublearn.stages.teacher import persona_teacher
from sublearn.store import read_jsonl
from sublearn.tinybase import BaseConfig, ensure_base

ANIMAL = get_category("animal")


def target_probability(model, target: str | None, questions: list[str]) -> np.ndarray:
    m = model if target is None else persona_teacher(model, ANIMAL, get_option(ANIMAL, target))
    p = np.asarray(option_probs(m, ANIMAL, questions))
    return (p / p.sum(axis=-1, keepdims=True)).mean(axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/audit-campaign"))
    ap.add_argument("--targets", default="owl,fox,eagle,wolf,cat")
    ap.add_argument("--neutral", type=int, default=20)
    ap.add_argument("--neutral-prompts", type=int, default=100)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    model = load_model(ensure_base(BaseConfig(seed=0)), device="cpu", dtype="float32")
    names = [o.name for o in ANIMAL.options]
    questions = list(ANIMAL.heldout[:3])
    base = target_probability(model, None, questions)
    for t in args.targets.split(","):
        teacher = target_probability(model, t, questions)
        print(f"P({t}): base {base[names.index(t)]:.3f}, teacher {teacher[names.index(t)]:.3f}")

    def scores(name: str) -> tuple[np.ndarray, np.ndarray]:
        kept, _ = apply_filter(read_jsonl(args.out / "data" / f"{name}.jsonl"), FilterConfig())
        return (np.array([r["index"] for r in kept]),
                contrast(np.load(args.out / "scores" / f"{name}.npy")))

    ref_index, ref = scores("reference")
    disjoint, paired = [], []
    for d in range(args.neutral):
        _, draw = scores(f"neutral-d{d}")
        _, other = scores(f"neutral-d{(d + 1) % args.neutral}")
        disjoint.append(permutation_test(draw, ref[ref_index >= args.neutral_prompts], 2000).p)
        paired.append(permutation_test(draw, other, 2000, seed=d).p)
    for label, p in (("vs reference on other prompts", disjoint),
                     ("vs the next neutral draw", paired)):
        p = np.concatenate(p)
        print(f"{label}: {len(p)} raw p, mean {p.mean():.3f}, below 0.05 {np.mean(p < 0.05):.3f}, "
              f"below 0.2 {np.mean(p < 0.2):.3f}")


if __name__ == "__main__":
    main()
