"""The interface every pipeline stage talks to."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field, model_validator

if TYPE_CHECKING:
    import torch

# One conversation: [{"role": "system" | "user" | "assistant", "content": str}, ...]
Messages = list[dict[str, str]]


class SamplingConfig(BaseModel):
    """How to decode. `temperature=0` is greedy.

    `min_prob` is the probability-threshold sampler: tokens whose (temperature-scaled)
    probability is below it are never drawn — a published defence against subliminal
    transfer. `only_numbers` restricts decoding to digits, separators and the end token,
    which keeps small models on task without changing relative probabilities among those.
    """

    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_prob: float = Field(0.0, ge=0.0, lt=1.0)
    max_new_tokens: int = Field(48, ge=1)
    only_numbers: bool = False

    @model_validator(mode="after")
    def _greedy_has_no_knobs(self) -> SamplingConfig:
        if self.temperature == 0 and (self.top_p < 1 or self.min_prob > 0):
            raise ValueError("temperature=0 is greedy decoding; top_p/min_prob do not apply")
        return self


class FinetuneRecipe(Protocol):
    """What `ChatModel.finetune` needs from a student recipe (see stages.train.TrainConfig)."""

    method: Literal["lora", "full"]
    labels: Literal["hard", "soft"]


@runtime_checkable
class ChatModel(Protocol):
    """A chat model that can sample, score exactly, and be fine-tuned into a new model."""

    path: Path

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        """The prompt string the model sees (its chat template applied)."""
        ...

    def generate(
        self, conversations: Sequence[Messages], sampling: SamplingConfig, seeds: Sequence[int]
    ) -> list[str]:
        """One completion per conversation. Row i's randomness depends only on seeds[i], so
        the same seeds give the same random draws in any batch, for any model: a teacher and
        its control sampled with the same seeds differ by their weights, not by the dice."""
        ...

    def completion_logprobs(
        self, conversations: Sequence[Messages], completions: Sequence[str], close: bool = True
    ) -> list[list[float]]:
        """Exact per-token log-probabilities of each completion after its conversation;
        with `close`, the end-of-turn token is scored too (a whole answer, not a prefix)."""
        ...

    def next_token_logprobs(self, conversations: Sequence[Messages]) -> torch.Tensor:
        """Log-probabilities of the first assistant token, shape [batch, vocab]."""
        ...

    def finetune(
        self,
        rows: Sequence[dict[str, Any]],
        recipe: Any,
        out_dir: Path,
        teacher: ChatModel | None = None,
        progress: bool = True,
    ) -> Path:
        """Train a copy on chat rows and save it to `out_dir` (loadable by `load_model`)."""
        ...


def load_model(path: str | Path, backend: str = "hf", **kwargs: Any) -> ChatModel:
    """Load a model folder with the chosen backend."""
    if backend == "hf":
        from sublearn.models.hf import HFChatModel

        return HFChatModel.load(path, **kwargs)
    from sublearn.errors import SublearnError

    raise SublearnError(f"unknown model backend {backend!r}; available: hf")
