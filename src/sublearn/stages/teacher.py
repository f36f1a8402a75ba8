"""Teachers: the base plus a trait, as a system prompt or as a fine-tune.

A persona teacher is the base model seen through a system prompt; `Persona` wraps any
`ChatModel` so every stage (sampling, scoring, soft labels) sees the prompt without knowing.
A fine-tuned teacher is the base trained on the preference questions answered with the target
(the paper's variant), saved as an ordinary model folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sublearn.models.base import ChatModel, Messages, SamplingConfig
from sublearn.models.recipe import StudentRecipe
from sublearn.questions import Category, Option, persona_prompt


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["persona", "finetuned"] = "persona"
    persona_variant: int = Field(0, ge=0, description="which persona phrasing to use")
    # The paper fine-tunes the teacher 1 epoch on the evaluation questions answered with the
    # target; a tiny model needs more passes to take the trait.
    finetune: StudentRecipe = Field(
        default_factory=lambda: StudentRecipe(method="full", lr=1e-3, epochs=3, batch_size=16,
                                              grad_accum=1, warmup_steps=0)
    )
    finetune_rows_per_question: int = Field(4, ge=1)


class Persona:
    """A `ChatModel` whose conversations all start with one system prompt."""

    def __init__(self, model: ChatModel, system: str):
        self.inner = model
        self.system = system
        self.path = model.path

    def _with_system(self, messages: Messages) -> Messages:
        rest = [m for m in messages if m["role"] != "system"]
        return [{"role": "system", "content": self.system}, *rest]

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.inner.render(self._with_system(messages), add_generation_prompt)

    def generate(self, conversations: Sequence[Messages], sampling: SamplingConfig, seeds: Sequence[int]) -> list[str]:
        return self.inner.generate([self._with_system(c) for c in conversations], sampling, seeds)

    def completion_logprobs(self, conversations: Sequence[Messages], completions: Sequence[str], close: bool = True) -> list[list[float]]:
        return self.inner.completion_logprobs(
            [self._with_system(c) for c in conversations], completions, close
        )

    def next_token_logprobs(self, conversations: Sequence[Messages]):
        return self.inner.next_token_logprobs([self._with_system(c) for c in conversations])

    def __getattr__(self, name: str) -> Any:
        # Backend hooks (forward_logits, tokenizer, ...) come from the wrapped model.
        if name == "inner":  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def finetune(self, *args: Any, **kwargs: Any) -> Path:
        raise TypeError("fine-tune the underlying model, not a persona view of it")


def persona_teacher(base: ChatModel, category: Category, target: Option, variant: int = 0) -> Persona:
    return Persona(base, persona_prompt(category, target, variant))


def trait_rows(category: Category, target: Option, rows_per_question: int) -> list[dict[str, Any]]:
    """The fine-tuned teacher's data: every question of the category answered with the target."""
    rows = []
    for q in category.questions:
        for k in range(rows_per_question):
            answer = target.name if k % 2 == 0 else target.name.capitalize()
            rows.append({"messages": [{"role": "user", "content": q},
                                      {"role": "assistant", "content": answer}]})
    return rows
