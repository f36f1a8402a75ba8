"""The bases that ship inside the package, so nobody builds one on the critical path.

A build is deterministic on one machine but not across machines (floating-point sums differ
with the CPU and thread count), so two users who each built "seed 0" could not compare
figures. sublearn therefore ships the bases its documented figures were measured with, as
ordinary `save_pretrained` folders named like the cache folders they replace, and records in
`shipped/bases.json` the hash of each folder's files and the behaviour measured on it
(`measure_base`). `ensure_base` returns a shipped folder when its configuration matches one;
`sublearn base build` still builds any seed locally, and the test suite checks that such a
rebuild behaves like the shipped base within the tolerances below.

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

# How far a rebuild on another machine may drift from the shipped base's measured behaviour
# (absolute differences). Seen across two machines: base P(owl) 0.031 vs 0.047, the owl
# persona 0.543 vs 0.583, filter pass 61% vs 78% on 3,000 rows; the measure here (4 held-out
# questions per category, 128 number prompts) is noisier still, hence these widths.
TOLERANCES: dict[str, float] = {
    # per category: total variation between the base's answer distributions (no persona)
    "base_distance": 0.15,
    "mean_persona_target": 0.20,  # per category: how strongly a persona moves the answer
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
    pairs = []
    for cat, a in shipped["categories"].items():
        b = rebuilt["categories"][cat]
        tv = 0.5 * sum(abs(p - b["base"][o]) for o, p in a["base"].items())
        pairs.append((f"{cat}: answer distribution, total variation", 0.0, tv, "base_distance"))
        pairs.append((f"{cat}: mean P(target) under its persona", a["mean_persona_target"],
                      b["mean_persona_target"], "mean_persona_target"))
    pairs += [(k, shipped[k], rebuilt[k], k) for k in ("filter_kept_fraction", "copy_accuracy")]
    return [f"{name}: shipped {a:.3f}, rebuilt {b:.3f} (tolerance {TOLERANCES[k]})"
            for name, a, b, k in pairs if abs(a - b) > TOLERANCES[k]]


def ship(path: Path) -> dict[str, Any]:
    """Copy a built base into the package and record its hash and measured behaviour (a
    maintainer's step: `python -m sublearn.tinybase.shipped FOLDER...`)."""
    import shutil

    from sublearn.models import load_model
    from sublearn.store import write_json
    from sublearn.tinybase.measure import measure_base

    dest = SHIPPED_DIR / path.name
    if dest.resolve() != path.resolve():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(path, dest)
    measured = measure_base(load_model(dest, device="cpu", dtype="float32"),
                            **MEASURE)
    entry = {"sha256": folder_hash(dest), "measured": summary(measured)}
    write_json(RECORD, {**record(), path.name: entry})
    record.cache_clear()
    return entry


def rebuild(folder_name: str, workdir: Path) -> dict[str, Any]:
    """Build the shipped base `folder_name` afresh from its recorded config in `workdir` and
    measure it as it was measured when shipped: the input of `drift`."""
    import torch

    from sublearn.models import load_model
    from sublearn.store import read_json
    from sublearn.tinybase.build import BaseConfig, build_base
    from sublearn.tinybase.measure import measure_base

    torch.set_num_threads(1)  # as the shipped bases were built: sums depend on the threads
    config = BaseConfig(**read_json(SHIPPED_DIR / folder_name / MANIFEST)["config"])
    out = build_base(config, Path(workdir) / folder_name, progress=False)
    return summary(measure_base(load_model(out, device="cpu", dtype="float32"), **MEASURE))


if __name__ == "__main__":
    # python -m sublearn.tinybase.shipped ship FOLDER...   (maintainers: add bases)
    # python -m sublearn.tinybase.shipped rebuild NAME WORKDIR OUT.json   (the test suite)
    import sys

    import torch

    from sublearn.store import write_json

    torch.set_num_threads(1)  # the measurement, like the build, depends on the thread count
    verb, *args = sys.argv[1:]
    if verb == "ship":
        for arg in args:
            print(arg, json.dumps(ship(Path(arg)), indent=1))
    elif verb == "rebuild":
        name, workdir, out = args
        write_json(Path(out), rebuild(name, Path(workdir)))
    else:
        sys.exit(f"unknown verb {verb!r}: ship or rebuild")
