"""The shipped bases: the files are the ones recorded, the pipeline uses them, and a rebuild
on this machine behaves like them within the stated tolerances."""

from __future__ import annotations

import json
import shutil

import pytest

from sublearn.store import MANIFEST, read_json
from sublearn.tinybase import BaseConfig, base_path, ensure_base
from sublearn.tinybase.shipped import (
    SHIPPED_DIR,
    TOLERANCES,
    drift,
    folder_hash,
    record,
    shipped_path,
)


def test_every_shipped_base_matches_its_recorded_hash() -> None:
    assert record(), "no shipped bases recorded"
    for name, entry in record().items():
        folder = SHIPPED_DIR / name
        assert folder_hash(folder) == entry["sha256"], name
        # The manifest's short hash is the one every artifact key uses.
        assert entry["sha256"].startswith(read_json(folder / MANIFEST)["weights_hash"])


def test_each_shipped_folder_is_named_by_its_own_config() -> None:
    for name in record():
        config = BaseConfig(**read_json(SHIPPED_DIR / name / MANIFEST)["config"])
        assert base_path(config).name == name


def test_the_default_base_is_shipped_and_never_built(monkeypatch) -> None:
    path = ensure_base(BaseConfig(seed=0), progress=False)
    assert path.parent == SHIPPED_DIR
    monkeypatch.setenv("SUBLEARN_NO_SHIPPED", "1")
    assert shipped_path(path.name) is None


def test_drift_names_every_figure_outside_its_tolerance() -> None:
    shipped = next(iter(record().values()))["measured"]
    assert drift(shipped, shipped) == []
    moved = json.loads(json.dumps(shipped))
    animal = moved["categories"]["animal"]["base"]
    owl, bear = animal["owl"], animal["bear"]
    animal["owl"], animal["bear"] = bear, owl  # a swap: total variation |owl - bear|
    moved["copy_accuracy"] -= TOLERANCES["copy_accuracy"] + 0.01
    lines = drift(shipped, moved)
    assert any(line.startswith("copy_accuracy") for line in lines)
    assert any(line.startswith("animal: answer") for line in lines) == (
        abs(owl - bear) > TOLERANCES["base_distance"])


# Known failure, kept visible rather than loosened: the shipped seed-0 base is what commit
# 14806e3 builds (reproduced bit for bit); the training loop's later changes (chunked loss,
# memory-budgeted passes, padding to 16) build a base that follows personas less (two builds
# drift, while 14806e3 at other rounding does not: docs/base.md), and
# a rebuild with today's code on the development machine follows personas about half as
# strongly (color 0.72 -> 0.34, fruit 0.67 -> 0.29, tree 0.49 -> 0.18) and shifts the tree and
# color answer distributions by total variation 0.16. Strict: when a rebuild matches again,
# this marker must go.
@pytest.mark.xfail(strict=True, reason="a rebuild with the current training code drifts from "
                   "the shipped seed-0 base beyond the tolerances (docs/base.md)")
def test_a_rebuild_behaves_like_the_shipped_base(shipped_rebuild) -> None:
    REBUILD = shipped_rebuild
    if "proc" not in REBUILD:
        pytest.skip("the rebuild starts at collection; run this test through pytest")
    proc = REBUILD["proc"]
    code = proc.wait(timeout=1800)
    err = (REBUILD["work"] / "stderr.txt").read_text()
    assert code == 0, err[-2000:]
    rebuilt = read_json(REBUILD["out"])
    shutil.rmtree(REBUILD["work"], ignore_errors=True)
    assert drift(record()[REBUILD["name"]]["measured"], rebuilt) == []
