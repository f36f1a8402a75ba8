"""Where a run's artifacts live and what their names hash.

Every artifact's path comes from `artifact_key` (the stage, its version and everything that
changes the artifact's content, the runtime included), and every model folder of a run from
`RunFolder`: the pipeline writes through it and readers such as `sublearn mechanism` find
models through it, so the layout is written down once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublearn.errors import SublearnError
from sublearn.experiment.config import ModelSpec
from sublearn.store import MANIFEST, cache_root, hash_files, read_json, stable_hash, write_text

# Bump a stage's version when its code changes what it writes: its artifacts (and everything
# downstream, whose keys include them) then get new paths instead of stale reuse.
STAGE_VERSIONS = {"teacher": 1, "sample": 1, "filter": 1, "soft_labels": 1, "student": 2,
                  "eval": 2, "channel": 1, "defence": 1,
                  # 2: a given reference is compared on the data's prompts only
                  "audit": 2}


def artifact_key(stage: str, *parts: Any) -> str:
    """The one function every artifact's path comes from: a hash of the stage, its version
    and everything that changes its content (callers pass the runtime too: backend, device,
    dtype)."""
    return stable_hash([stage, STAGE_VERSIONS[stage], *parts])


def runtime(spec: ModelSpec, backend: str) -> list[str]:
    """What besides the weights changes a model's numbers: backend, device and dtype."""
    if backend in ("hf", "vllm"):
        from sublearn.models.hf import pick_device, pick_dtype

        dev = pick_device(spec.device)
        return [backend, dev.type, str(pick_dtype(spec.dtype, dev))]
    return [backend]


def weights_hash(path: Path) -> str:
    """The identity of a model's weights: its manifest's hash when sublearn wrote it, else
    a hash of its files, remembered by (name, size, mtime) of each so a 7B folder is read
    once, not in every sweep task."""
    if not path.exists():  # an API model id: the service's weights are its name
        return stable_hash(["model id", str(path)])
    m = path / MANIFEST
    if m.exists():
        h = read_json(m).get("weights_hash")
        if h:
            return h
    stat = [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()]
    memo = cache_root() / "weights-hashes" / stable_hash([str(path.resolve()), stat])
    if memo.exists():
        return memo.read_text().strip()
    h = hash_files(path)
    write_text(memo, h)
    return h


def _only(folder: Path, stem: str) -> Path | None:
    """The one finished artifact `stem-<hash>` in `folder` (hidden names are unfinished)."""
    found = sorted(folder.glob(f"{stem}-*"))
    if len(found) > 1:
        raise SublearnError(f"{folder}: {len(found)} folders {stem}-* "
                            f"({', '.join(p.name for p in found)}): the run folder holds "
                            "models of several configs; measure a folder made by one")
    return found[0] if found else None


@dataclass(frozen=True)
class RunFolder:
    """A run folder's model layout: teachers/<label>-<key>, students/<arm>-s<seed>-<key>."""

    dir: Path

    @property
    def teachers(self) -> Path:
        return self.dir / "teachers"

    @property
    def students(self) -> Path:
        return self.dir / "students"

    def teacher(self, label: str, key: str) -> Path:
        return self.teachers / f"{label}-{key}"

    def student(self, arm: str, seed: int, key: str) -> Path:
        return self.students / f"{arm}-s{seed}-{key}"

    def find_teacher(self, label: str) -> Path | None:
        """The finished teacher `label` of a run made by one config, whatever its key."""
        return _only(self.teachers, label)

    def find_student(self, arm: str, seed: int) -> Path | None:
        return _only(self.students, f"{arm}-s{seed}")
