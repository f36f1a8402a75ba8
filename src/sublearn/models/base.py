"""What stages ask of a model: capabilities, not one fat interface.

A stage needs one of three things from a model — to *sample* completions, to *score* given
completions exactly, or to *train* a new model from chat rows — and backends differ in which
they offer: Hugging Face does all three, vLLM only samples (fast), an API may sample, give the
top few log-probabilities and fine-tune remotely, and the fake backend does everything without
weights. Each backend declares its `capabilities`; the pipeline checks them against the config
before any work starts (see `models.registry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field, model_validator

if TYPE_CHECKING:
    import torch

    from sublearn.models.recipe import TrainingRecipe

# One conversation: [{"role": "system" | "user" | "assistant", "content": str}, ...]
Messages = list[dict[str, str]]

# Capability names, as backends declare them and estimators and stages require them.
SAMPLE = "sample"  # Sampler.generate
SCORE = "score"  # Scorer.completion_logprobs and Scorer.number_distributions: exact, full vocab
TOP_LOGPROBS = "top_logprobs"  # TopLogprobs.top_logprobs: the k best first tokens only (APIs)
TRAIN = "train"  # Trainer.finetune


class SamplingConfig(BaseModel):
    """How to decode. `temperature=0` is greedy.

    `min_prob` is the probability-threshold sampler: tokens whose (temperature-scaled)
    probability is below it are never drawn — a published defence against subliminal
    transfer. `only_numbers` restricts decoding to digits, separators and the end token,
    which keeps small models on task without changing relative probabilities among those.
    `number_grammar` goes further: every token keeps the completion a prefix of a well-formed
    list (at most 10 numbers of 0..999, one separator throughout; `models.number_grammar`),
    for real small models that leave the format even with number tokens only.
    """

    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_prob: float = Field(0.0, ge=0.0, lt=1.0)
    max_new_tokens: int = Field(48, ge=1)
    only_numbers: bool = False
    # Left out of every dump while off, so the keys of datasets sampled before it existed hold.
    number_grammar: bool = Field(False, exclude_if=lambda v: not v)

    @model_validator(mode="after")
    def _greedy_has_no_knobs(self) -> SamplingConfig:
        if self.temperature == 0 and (self.top_p < 1 or self.min_prob > 0):
            raise ValueError("temperature=0 is greedy decoding; top_p/min_prob do not apply")
        return self


@runtime_checkable
class Sampler(Protocol):
    """Writes completions."""

    path: Path
    capabilities: frozenset[str]

    def generate(
        self, conversations: Sequence[Messages], sampling: SamplingConfig, seeds: Sequence[int]
    ) -> list[str]:
        """One completion per conversation. Row i's randomness depends only on seeds[i], so
        the same seeds give the same random draws in any batch, for any model of the same
        backend: a teacher and its control sampled with the same seeds differ by their
        weights, not by the dice."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Exact log-probabilities of given text (teacher-forced)."""

    path: Path
    capabilities: frozenset[str]

    def completion_logprobs(
        self, conversations: Sequence[Messages], completions: Sequence[str], close: bool = True
    ) -> list[list[float]]:
        """Per-token log-probabilities of each completion after its conversation; with
        `close`, the end-of-turn token is scored too (a whole answer, not a prefix)."""
        ...

    def encode(self, text: str) -> list[int]:
        """The token ids `completion_logprobs` scores a completion as: its i-th log-prob is
        that of the i-th id (the stem estimator checks that a stem's ids stay whole)."""
        ...

    def number_distributions(
        self, conversations: Sequence[Messages], completions: Sequence[str]
    ) -> list[torch.Tensor]:
        """Soft labels: at every completion position (end-of-turn included), the next-token
        log-distribution restricted to number tokens and renormalised, as float32
        [positions, number tokens] in the order of `number_token_ids`. Restricting to
        numbers means no probability mass on words can carry the trait."""
        ...


@runtime_checkable
class TopLogprobs(Protocol):
    """The best k first tokens of an answer and their log-probabilities (what APIs give)."""

    capabilities: frozenset[str]

    def top_logprobs(self, conversations: Sequence[Messages], k: int = 20) -> list[dict[str, float]]:
        ...


@runtime_checkable
class Trainer(Protocol):
    """Trains a new model from chat rows."""

    path: Path
    capabilities: frozenset[str]

    def finetune(
        self,
        rows: Sequence[dict[str, Any]],
        recipe: TrainingRecipe,
        out_dir: Path,
        progress: bool = True,
    ) -> Path:
        """Train on chat rows (each may carry `soft_labels`, see `Scorer.number_distributions`)
        and save a folder at `out_dir` that `load_model` can load."""
        ...


@runtime_checkable
class ChatModel(Sampler, Scorer, Trainer, Protocol):
    """A backend that can do everything (Hugging Face, fake)."""
