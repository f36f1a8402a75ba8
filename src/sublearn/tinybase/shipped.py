"""The bases that ship inside the package, so nobody builds one on the critical path.

A build is deterministic on one machine but not across machines (floating-point sums differ
with the CPU and thread count), so two users who each built "seed 0" could not compare
figures. sublearn therefore ships the bases its documented figures were measured with, as
ordinary `save_pretrained` folders named like the cache folders they replace, and records in
`shipped/bases.json` the hash of each folder's files and the behaviour measured on it
(`measure_base`). `ensure_base` returns a shipped folder when its configuration matches one;
`sublearn base build` still builds any seed locally, and the test suite checks that such a
rebuild reproduces what the recipe fixes of the shipped base (the tolerances below).

Set SUBLEARN_NO_SHIPPED=1 to ignore the shipped bases and use (or build) local ones.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from sublearn.store import MANIFEST, hash_files

SHIPPED_DIR = Path(__file__).parent / "shipped"
RECORD = SHIPPED_DIR / "bases.json"

# What a rebuild must reproduce of the shipped base's measured behaviour. A rebuild is another
# draw from the recipe, not a copy: the thread count alone moves the weights by up to 5e-4
# after 94 steps, more than any later change to the training code does (at most 3.8e-4), and
# five builds of seed 0 that differ only in such rounding (docs/base.md, "Rebuilding") follow
# personas anywhere from 0.13 to 0.49 (animal) or 0.34 to 0.77 (color) mean P(target). How
# *strongly* a base follows personas is therefore not reproducible, and a rebuild is only asked
# to follow them at all; what the corpus fixes is reproducible, and is compared with the
# shipped figures.
TOLERANCES: dict[str, float] = {
    # per category, total variation between the base's answer distributions (no persona): at
    # most 0.23 across the five rounding draws, 0.30-0.62 for a base of another corpus seed
    "base_distance": 0.30,
    # per category, a floor: mean P(target) under its persona at least this many times chance
    # (1 / options); every draw reached at least 2.2 times, a base that ignores personas about 1
    "persona_lift": 1.5,
    "filter_kept_fraction": 0.20,
    "copy_accuracy": 0.10,
}

# The measurement recorded for every shipped base and repeated on a rebuild.
MEASURE: dict[str, int] = {"n_questions": 4, "n_numbers": 128}


@cache
def record() -> dict[str, Any]:
    """Folder name -> {"sha256": hash of its files, "measured": behaviour summary}."""
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


def shipped_path(folder_name: str) -> Path | None:
    """The shipped copy of the base whose cache folder is `folder_name`, if one ships."""
    if os.environ.get("SUBLEARN_NO_SHIPPED"):
        return None
    path = SHIPPED_DIR / folder_name
    return path if folder_name in record() and (path / MANIFEST).exists() else None


def folder_hash(path: Path) -> str:
    return hash_files(path, length=64)


def summary(measured: dict[str, Any]) -> dict[str, Any]:
    """The figures of `measure_base` that `drift` compares."""
    return {
        "categories": {name: {"base": {o: round(p, 4) for o, p in c["base"].items()},
                              "mean_persona_target": round(c["mean_persona_target"], 4)}
                       for name, c in measured["categories"].items()},
        "filter_kept_fraction": round(measured["numbers"]["filter"]["kept_fraction"], 4),
        "copy_accuracy": round(measured["copy_accuracy"], 4),
    }


def drift(shipped: dict[str, Any], rebuilt: dict[str, Any]) -> list[str]:
    """Every figure of `rebuilt` (a `summary`) outside its tolerance of `shipped`, as lines."""
    lines = []
    for cat, a in shipped["categories"].items():
        b = rebuilt["categories"][cat]
        tv = 0.5 * sum(abs(p - b["base"][o]) for o, p in a["base"].items())
        if tv > TOLERANCES["base_distance"]:
            lines.append(f"{cat}: answer distribution, total variation {tv:.3f} from the shipped "
                         f"(tolerance {TOLERANCES['base_distance']})")
        floor = TOLERANCES["persona_lift"] / len(a["base"])
        if b["mean_persona_target"] < floor:
            lines.append(f"{cat}: mean P(target) under its persona {b['mean_persona_target']:.3f}"
                         f", below {TOLERANCES['persona_lift']} x chance ({floor:.3f}; shipped "
                         f"{a['mean_persona_target']:.3f})")
    for k in ("filter_kept_fraction", "copy_accuracy"):
        if abs(shipped[k] - rebuilt[k]) > TOLERANCES[k]:
            lines.append(f"{k}: shipped {shipped[k]:.3f}, rebuilt {rebuilt[k]:.3f} "
                         f"(tolerance {TOLERANCES[k]})")
    return lines
