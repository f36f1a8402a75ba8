"""The backend registry: a name in the config -> an implementation, imported only when used.

Each entry says what the backend can do and which optional package it needs, so a config that
asks vLLM to train, or names vLLM on a machine without it, is refused when it loads — not
after an hour of sampling. Adding a backend is one entry here plus its module.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from sublearn.errors import SublearnError
from sublearn.models.base import SAMPLE, SCORE, TOP_LOGPROBS, TRAIN


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
    try:
        return BACKENDS[name]
    except KeyError:
        raise SublearnError(
            f"unknown model backend {name!r}; available: {', '.join(BACKENDS)}"
        ) from None


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
