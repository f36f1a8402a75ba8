"""The backend registry: a name in the config -> an implementation, imported only when used;
and `load_model`, which resolves a model path and hands it to the chosen backend.

Each entry says what the backend can do and which optional package it needs, so a config that
asks vLLM to train, or names vLLM on a machine without it, is refused when it loads — not
after an hour of sampling. Adding a backend is one entry here plus its module.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sublearn.errors import SublearnError, lookup
from sublearn.models.base import SAMPLE, SCORE, TOP_LOGPROBS, TRAIN
from sublearn.models.catalogue import resolve_model_path


@dataclass(frozen=True)
class Backend:
    target: str  # "module:Class"
    capabilities: frozenset[str]
    requires: str | None = None  # an importable package the backend needs
    extra: str | None = None  # the pip extra that brings it
    api: bool = False  # a remote service: models are ids (not folders), no device or dtype

    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


BACKENDS: dict[str, Backend] = {
    "hf": Backend("sublearn.models.hf:HFChatModel", frozenset({SAMPLE, SCORE, TRAIN})),
    "vllm": Backend("sublearn.models.vllm:VLLMSampler", frozenset({SAMPLE}),
                    requires="vllm", extra="vllm"),
    "openai": Backend("sublearn.models.openai_api:OpenAIChatModel",
                      frozenset({SAMPLE, TOP_LOGPROBS, TRAIN}), requires="openai", extra="openai",
                      api=True),
    "fake": Backend("sublearn.models.fake:FakeChatModel", frozenset({SAMPLE, SCORE, TRAIN})),
}


def get_backend(name: str) -> Backend:
    return lookup(BACKENDS, name, "model backend")


def check_backend(name: str, needs: set[str] | frozenset[str], role: str) -> Backend:
    """Refuse, with one line naming the role, a backend that is unknown, not installed, or
    lacks a capability the role needs."""
    b = get_backend(name)
    missing = set(needs) - b.capabilities
    if missing:
        raise SublearnError(
            f"{role}: backend {name!r} cannot {', '.join(sorted(missing))} "
            f"(it can: {', '.join(sorted(b.capabilities))})"
        )
    if not b.available():
        raise SublearnError(
            f"{role}: backend {name!r} needs the package {b.requires!r}: "
            f"pip install 'sublearn[{b.extra}]'"
        )
    return b


def backend_class(name: str) -> Any:
    b = get_backend(name)
    if not b.available():
        raise SublearnError(
            f"backend {name!r} needs the package {b.requires!r}: pip install 'sublearn[{b.extra}]'"
        )
    module, _, cls = b.target.partition(":")
    return getattr(importlib.import_module(module), cls)


def load_model(path: str | Path, backend: str = "hf", **kwargs: Any) -> Any:
    """Load a model folder (or, for API backends, a model id) with the chosen backend. A
    GGUF file is loaded as its converted folder, converted on first use (`models.gguf`)."""
    if not get_backend(backend).api:
        path = resolve_model_path(path)
    return backend_class(backend).load(path, **kwargs)
