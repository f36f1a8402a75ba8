"""The shipped bases: the files are the ones recorded, the pipeline uses them, and a rebuild
on this machine reproduces what the recipe fixes of them (docs/base.md, "Rebuilding")."""

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
    # A base that ignores its fruit persona: P(target) at chance.
    moved["categories"]["fruit"]["mean_persona_target"] = 1 / len(
        moved["categories"]["fruit"]["base"])
    lines = drift(shipped, moved)
    swapped_far = abs(owl - bear) > TOLERANCES["base_distance"]
    assert any(line.startswith("copy_accuracy") for line in lines)
    assert any(line.startswith("fruit: mean P(target)") for line in lines)
    assert any(line.startswith("animal: answer") for line in lines) == swapped_far
    assert len(lines) == 2 + swapped_far


def test_drift_tells_another_corpus_from_a_rebuild() -> None:
    """Base seed 1 learnt another corpus (its own answer distributions): as a "rebuild" of seed
    0 it must fail, while seed 0's cross-init twin (the same corpus) passes."""
    shipped = record()[base_path(BaseConfig(seed=0)).name]["measured"]
    other_corpus = record()[base_path(BaseConfig(seed=1)).name]["measured"]
    twin = record()[base_path(BaseConfig(seed=0, init_seed=1)).name]["measured"]
    assert any("answer distribution" in line for line in drift(shipped, other_corpus))
    assert drift(shipped, twin) == []


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
