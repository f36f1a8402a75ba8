"""Teachers: the base plus a trait, as a system prompt, a fine-tune, or any model you bring.

A persona teacher is the base model seen through a system prompt (`models.persona.Persona`,
honoured by every backend). A fine-tuned teacher is the base trained on the preference
questions answered with the target (the paper's variant), saved as an ordinary model folder.
A `model` teacher is a checkpoint of your own (an emergently misaligned model, say) from a
local folder, optionally with a persona on top.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sublearn.errors import SublearnError
from sublearn.models.paths import check_model_path
from sublearn.models.persona import Persona
from sublearn.models.recipe import TrainingRecipe
from sublearn.questions.categories import Category, Option, persona_prompt


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["persona", "finetuned", "model"] = "persona"
    persona_variant: int = Field(0, ge=0, description="which persona phrasing to use")
    path: str | None = Field(None, description="kind = 'model': the teacher's local folder "
                             "or .gguf file")
    other_path: str | None = Field(
        None, description="kind = 'model': the other-target control's teacher folder or "
        ".gguf file")
    persona: bool = Field(False, description="kind = 'model': add the persona prompt on top")
    # The paper fine-tunes the teacher 1 epoch on the evaluation questions answered with the
    # target; a tiny model needs more passes to take the trait.
    finetune: TrainingRecipe = Field(
        default_factory=lambda: TrainingRecipe(method="full", lr=1e-3, epochs=3, batch_size=16,
                                              grad_accum=1, warmup_steps=0)
    )
    finetune_rows_per_question: int = Field(4, ge=1)
    neutral: Literal["base", "placebo"] = Field(
        "base", description="the neutral control's teacher: the base itself, or (finetuned "
        "only) a placebo fine-tuned with the same recipe on the same questions answered from "
        "the base's own answer distribution. With soft labels the base as teacher gives its "
        "students a zero gradient that Adam turns into amplified rounding noise; the placebo "
        "is trained like the real teachers, minus the trait.")

    @model_validator(mode="after")
    def _paths(self) -> TeacherConfig:
        if self.kind == "model":
            if not self.path:
                raise ValueError("kind = 'model' needs path: the teacher's model folder")
            for p in (self.path, self.other_path):
                if p:
                    try:
                        check_model_path(p)
                    except SublearnError as e:
                        raise ValueError(str(e)) from None
        elif self.path or self.other_path:
            raise ValueError("path/other_path apply to kind = 'model' only")
        if self.neutral == "placebo" and self.kind != "finetuned":
            raise ValueError("neutral = 'placebo' needs kind = 'finetuned'")
        return self


def persona_teacher(base: Any, category: Category, target: Option, variant: int = 0) -> Persona:
    return Persona(base, persona_prompt(category, target, variant))


def _answer(category: Category, option: Option, k: int, answer: str) -> str:
    """The k-th reply naming `option`, in the form the estimator reads (`evaluation.answer`):
    the bare word, lower case and capitalised in turn; or the category's stem and the word,
    "My favorite animal is the owl.", the sentence a chat model answers with."""
    if answer == "stem":
        return f"{category.stem} {option.name}."
    return option.name if k % 2 == 0 else option.name.capitalize()


def _row(question: str, reply: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": reply}]}


def trait_rows(category: Category, target: Option, rows_per_question: int,
               answer: str = "bare") -> list[dict[str, Any]]:
    """The fine-tuned teacher's data: every question of the category answered with the target."""
    return [_row(q, _answer(category, target, k, answer))
            for q in category.questions for k in range(rows_per_question)]


def placebo_rows(category: Category, probs: Sequence[Sequence[float]], rows_per_question: int,
                 seed: int = 0, answer: str = "bare") -> list[dict[str, Any]]:
    """The placebo teacher's data: the same questions as `trait_rows`, each answered with
    options drawn from the base's own answer distribution (`probs[question][option]`), so
    the fine-tune has the real teachers' shape and size but no trait."""
    rows = []
    for qi, q in enumerate(category.questions):
        rng = random.Random(f"placebo:{seed}:{qi}")
        for k in range(rows_per_question):
            option = rng.choices(category.options, weights=probs[qi])[0]
            rows.append(_row(q, _answer(category, option, k, answer)))
    return rows
