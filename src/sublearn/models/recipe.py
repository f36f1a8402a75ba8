"""The training recipe (students, fine-tuned teachers, the base): backend-neutral data that every
`Trainer.finetune` reads."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainingRecipe(BaseModel):
    """How a model is fine-tuned: a student (`[student]`), a fine-tuned teacher
    (`[teacher.finetune]`), the embedded base's pretraining. Defaults are the paper's
    open-model recipe: LoRA r=8, alpha=8 on every attention and
    MLP projection, 3 epochs, lr 2e-4 with linear decay after 5 warm-up steps, effective batch
    66 (22 x 3), max length 500, loss on completion tokens only."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "full"] = "lora"
    labels: Literal["hard", "soft"] = Field(
        "hard",
        description="hard: sampled tokens (the paper). soft: match the teacher's next-token "
        "distribution restricted to number tokens, renormalised on both sides.",
    )
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(8.0, gt=0)
    lora_targets: list[str] = Field(default_factory=lambda: list(ALL_PROJECTIONS))
    rslora: bool = Field(False, description="rank-stabilised LoRA scaling alpha/sqrt(r), as in "
                         "the Llama-3.2-1B replication")
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    epochs: float = Field(3.0, gt=0)
    schedule: Literal["linear", "constant", "cosine"] = "linear"
    warmup_steps: int = Field(5, ge=0)
    batch_size: int = Field(22, ge=1)
    grad_accum: int = Field(3, ge=1)
    max_length: int = Field(500, ge=8)
    loss_average: Literal["token", "example"] = Field(
        "token",
        description="token: every completion token weighs the same (standard SFT). example: "
        "every row weighs the same, so one-word answers are not drowned by long ones.",
    )
    loss_on: Literal["completion", "all"] = Field(
        "completion",
        description="completion: the assistant's reply only (SFT). all: every token after the "
        "first, as in pretraining (the embedded base's build).",
    )
    group_by_length: bool = Field(False, description="batch similar lengths together (speed)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, ~30% "
        "more time (long rows on a large model)")
    layers: list[int] | None = Field(
        None,
        # Left out of dumps while None: recipe dumps are part of existing artifacts' cache keys.
        exclude_if=lambda v: v is None,
        description="train only these decoder layers (0-based indices); None (default): every "
        "layer. full: the other layers, embeddings, final norm and LM head stay frozen. lora: "
        "adapters on these layers only.",
    )
    seed: int = 0

    @field_validator("layers")
    @classmethod
    def _layers_are_indices(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("layers must name at least one decoder layer (omit it for all)")
        if min(v) < 0:
            raise ValueError(f"layers are 0-based indices, got {min(v)}")
        if len(set(v)) != len(v):
            raise ValueError(f"layers has duplicates: {v}")
        # Sorted, so that the same set of layers is one recipe (and one cache key).
        return sorted(v)

    @model_validator(mode="after")
    def _soft_needs_completions(self) -> TrainingRecipe:
        if self.labels == "soft" and self.loss_on == "all":
            raise ValueError("soft labels match the teacher on completion tokens: loss_on "
                             "must be 'completion'")
        return self
