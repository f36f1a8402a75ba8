"""A persona: any backend's model seen through one system prompt.

The wrapper only rewrites conversations, so every backend honours it for every capability it
has (sampling, exact scoring, soft labels, top log-probs) without knowing; besides the
tokenizer's `encode`, it forwards nothing else. Training is not among its capabilities:
fine-tune the model underneath, not a view of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sublearn.models.base import TRAIN, Messages, SamplingConfig


def with_system(messages: Messages, system: str) -> Messages:
    """The conversation with `system` as its system prompt, in place of any other."""
    return [{"role": "system", "content": system},
            *(m for m in messages if m["role"] != "system")]


class Persona:
    def __init__(self, model: Any, system: str):
        self.inner = model
        self.system = system
        self.path: Path = model.path
        self.capabilities = frozenset(model.capabilities - {TRAIN})

    def wrap(self, messages: Messages) -> Messages:
        """The conversation with this persona's system prompt in place of any other."""
        return with_system(messages, self.system)

    def _all(self, conversations: Sequence[Messages]) -> list[Messages]:
        return [self.wrap(c) for c in conversations]

    def generate(
        self, conversations: Sequence[Messages], sampling: SamplingConfig, seeds: Sequence[int]
    ) -> list[str]:
        return self.inner.generate(self._all(conversations), sampling, seeds)

    def encode(self, text: str) -> list[int]:
        # A persona changes the conversation, never how a completion is tokenized.
        return self.inner.encode(text)

    def completion_logprobs(
        self, conversations: Sequence[Messages], completions: Sequence[str], close: bool = True
    ) -> list[list[float]]:
        return self.inner.completion_logprobs(self._all(conversations), completions, close)

    def number_distributions(self, conversations: Sequence[Messages], completions: Sequence[str]):
        return self.inner.number_distributions(self._all(conversations), completions)

    def top_logprobs(self, conversations: Sequence[Messages], k: int = 20) -> list[dict[str, float]]:
        return self.inner.top_logprobs(self._all(conversations), k)
