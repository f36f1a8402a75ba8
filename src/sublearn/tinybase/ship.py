"""The maintainers' side of the shipped bases: copy a built base into the package and record
its hash and measured behaviour (`ship`), or build a shipped base afresh and measure it as it
was measured (`rebuild`, which the test suite compares with `shipped.drift`).

    python -m sublearn.tinybase.ship ship FOLDER...
    python -m sublearn.tinybase.ship rebuild NAME WORKDIR OUT.json
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from sublearn.models import load_model
from sublearn.store import MANIFEST, read_json, write_json
from sublearn.tinybase.build import BaseConfig, build_base
from sublearn.tinybase.measure import measure_base
from sublearn.tinybase.shipped import MEASURE, RECORD, SHIPPED_DIR, folder_hash, record, summary


def ship(path: Path) -> dict[str, Any]:
    """Copy a built base into the package and record its hash and measured behaviour (a
    maintainer's step: `python -m sublearn.tinybase.ship ship FOLDER...`)."""
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
    torch.set_num_threads(1)  # as the shipped bases were built: sums depend on the threads
    config = BaseConfig(**read_json(SHIPPED_DIR / folder_name / MANIFEST)["config"])
    out = build_base(config, Path(workdir) / folder_name, progress=False)
    return summary(measure_base(load_model(out, device="cpu", dtype="float32"), **MEASURE))


if __name__ == "__main__":
    # python -m sublearn.tinybase.ship ship FOLDER...   (maintainers: add bases)
    # python -m sublearn.tinybase.ship rebuild NAME WORKDIR OUT.json   (the test suite)
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
