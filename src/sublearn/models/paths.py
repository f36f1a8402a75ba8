"""Model paths checked when a config loads: a `save_pretrained` folder, a GGUF file or a
catalogue name, each refused in one line naming the path, long before anything is loaded."""

from __future__ import annotations

from pathlib import Path

from sublearn.errors import SublearnError
from sublearn.models.catalogue import catalogue_name, get_entry
from sublearn.models.gguf import check_gguf, is_gguf


def check_model_folder(path: str | Path) -> Path:
    """A clear error for the two common mistakes: a missing path, a folder that isn't a model."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SublearnError(f"{p}: model path does not exist")
    if not p.is_dir() or not (
        (p / "config.json").exists() or (p / "adapter_config.json").exists()
    ):
        raise SublearnError(
            f"{p}: not a model folder (expected config.json or adapter_config.json from "
            "save_pretrained)"
        )
    return p


def check_model_path(path: str | Path) -> Path:
    """`check_model_folder`, a GGUF file or a catalogue name ("catalogue:smollm2-135m"):
    checked here (the file exists and starts with the GGUF magic; the name is known) and
    converted to a folder only when it is loaded (`models.catalogue.resolve_model_path`)."""
    name = catalogue_name(path)
    if name is not None:
        get_entry(name)
        return Path(path)
    return check_gguf(path) if is_gguf(path) else check_model_folder(path)
