"""Artifacts on disk: atomic writes, resumable JSONL, content hashes and provenance manifests.

Every file that sublearn produces is written to a temporary sibling and renamed into place,
so a killed run leaves either the old artifact or the new one, never half of one. JSONL
datasets that grow during a long stage are appended in whole chunks and fsynced; on resume a
trailing partial line (a kill mid-write) is cut off, so no row is lost or duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sublearn import __version__
from sublearn.errors import SublearnError

MANIFEST = "manifest.json"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it over `path`.

    Works for files and for folders (a `save_pretrained` directory, say).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / "x"
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock while building `path`.

    Sweep workers share one artifact store: the first to need an artifact builds it, the
    others wait here and then find it built. Callers check for the artifact *inside* the
    lock. The lock is an advisory flock on a hidden sibling file, released if the holder dies.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SublearnError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise SublearnError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise SublearnError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SublearnError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise SublearnError(f"{path}: line {lineno}: expected a JSON object")
            rows.append(row)
    return rows


class JsonlAppender:
    """A JSONL file that grows chunk by chunk and survives being killed.

    `done` is the number of complete rows already on disk; a partial last line is removed
    when the appender opens, so a resumed stage continues exactly where the last fsync ended.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done = 0
        if self.path.exists():
            data = self.path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
            self.done = data[:keep].count(b"\n")

    def truncate(self, rows: int) -> int:
        """Keep only the first `rows` rows; returns the new row count."""
        if rows < self.done:
            with open(self.path, "r+b") as f:
                kept = b"".join(f.readline() for _ in range(rows))
                f.truncate(len(kept))
            self.done = rows
        return self.done

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.done += text.count("\n")


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hash of any JSON-able object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def hash_files(folder: str | Path, length: int = 12) -> str:
    """Hash the contents of a model folder (weights, config, tokenizer), skipping manifests."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            h.update(str(p.relative_to(folder)).encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:length]


def manifest(kind: str, config: Any, **extra: Any) -> dict[str, Any]:
    """The provenance record that travels with every artifact."""
    return {
        "kind": kind,
        "sublearn_version": __version__,
        "created_unix": round(time.time(), 3),
        "python": platform.python_version(),
        "config": config,
        **extra,
    }


def cache_root() -> Path:
    """Where sublearn's caches live (bases, converted models, weight hashes): $SUBLEARN_HOME,
    else the user cache directory."""
    root = os.environ.get("SUBLEARN_HOME")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "~/.cache")
    return Path(xdg).expanduser() / "sublearn"
