"""Judges: a model that reads another model's answer and scores it.

Any backend that can sample serves (an OpenAI-compatible API, a local Hugging Face or vLLM
model, the fake backend in tests). A judge rates an answer's *alignment* and its *coherence*,
each 0-100 from its own prompt (one property per request, so one cannot leak into the other),
and answers yes/no questions about a text ("does this code refer to owls, even subtly?").

Replies are parsed strictly, because a lenient parser turns a judge's rambling into numbers
nobody asked for: a score is one ASCII integer 0-100, a flag is YES or NO, each alone apart
from surrounding whitespace. Anything else ("about 70", "70 or 80", "085", "٧٠", "Yes.") is
retried with a new seed up to `retries` times, then recorded as missing (None): never turned
into a number. Callers count what is missing and leave it out of every rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sublearn.errors import SublearnError
from sublearn.models.base import SAMPLE, Messages, SamplingConfig
from sublearn.models.openai_api import check_sampling
from sublearn.models.paths import check_model_path
from sublearn.models.registry import check_backend, get_backend, load_model
from sublearn.questions.judge_prompts import parse_flag, parse_score, request
from sublearn.store import stable_hash


class JudgeScore(BaseModel):
    """One answer's judgements; None where the judge never gave a well-formed reply."""

    alignment: int | None
    coherence: int | None


class Judge:
    """Scores and flags through any model with the Sampler protocol (`models.base`).

    Every request of a call goes out as one batch, then only the malformed ones again, each
    retry with fresh seeds: row i of attempt a samples with a seed that depends only on
    (seed, a, i), so a judgement is repeatable wherever the backend honours seeds.
    """

    def __init__(self, model: Any, retries: int = 2, seed: int = 0,
                 sampling: SamplingConfig | None = None):
        if retries < 0:
            raise SublearnError(f"judge: retries must be >= 0, got {retries}")
        if SAMPLE not in getattr(model, "capabilities", frozenset()):
            raise SublearnError(f"judge: {getattr(model, 'path', model)} cannot sample")
        self.model = model
        self.retries = retries
        self.seed = seed
        # Temperature 1 by default: at 0 a retry would repeat the same malformed reply.
        self.sampling = sampling or SamplingConfig(temperature=1.0, max_new_tokens=8)
        self.malformed = 0  # replies refused so far, retried ones included

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[JudgeScore]:
        """Alignment and coherence of each (question, answer), in one batch."""
        replies = self._ask([request(kind, q, a) for q, a in pairs
                             for kind in ("alignment", "coherence")], parse_score)
        return [JudgeScore(alignment=replies[2 * i], coherence=replies[2 * i + 1])
                for i in range(len(pairs))]

    def flags(self, texts: Sequence[str], question: str) -> list[bool | None]:
        """The judge's YES (True) or NO (False) to `question` about each text."""
        return self._ask([request("flag", question, t) for t in texts], parse_flag)

    def _ask(self, conversations: list[Messages], parse: Any) -> list[Any]:
        out: list[Any] = [None] * len(conversations)
        pending = list(range(len(conversations)))
        for attempt in range(self.retries + 1):
            if not pending:
                break
            seeds = [int(stable_hash(["judge", self.seed, attempt, i], length=15), 16)
                     for i in pending]
            replies = self.model.generate([conversations[i] for i in pending], self.sampling,
                                          seeds)
            still = []
            for i, reply in zip(pending, replies, strict=True):
                out[i] = parse(reply)
                if out[i] is None:
                    self.malformed += 1
                    still.append(i)
            pending = still
        return out


class JudgeConfig(BaseModel):
    """`[judge]`: the model that judges, and how. Checked at load: the backend must be able
    to sample, and a local model must be a model folder."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="an API model id (backend 'openai'), else a local model "
                       "folder (hf, vllm, fake)")
    backend: str = Field("openai", description="openai, hf, vllm, fake")
    base_url: str | None = Field(None, description="an OpenAI-compatible server; default: "
                                 "$OPENAI_BASE_URL, else the OpenAI API")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to the "
                                    "backend's load, e.g. {concurrency = 16} for openai")
    device: str = "auto"
    dtype: str = "auto"
    retries: int = Field(2, ge=0, description="new tries of a malformed reply before it is "
                         "counted as missing")
    seed: int = 0
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=1.0, max_new_tokens=8),
        description="the judge's decoding: a reply is a few tokens; temperature > 0 so a "
        "retry can differ")

    @model_validator(mode="after")
    def _usable(self) -> JudgeConfig:
        try:
            backend = check_backend(self.backend, {SAMPLE}, "backend")
            if backend.api:

                check_sampling(self.sampling)
            else:
                check_model_path(self.model)
        except SublearnError as e:  # as a ValueError, pydantic names the field
            raise ValueError(str(e)) from None
        return self

    def build(self, model: Any) -> Judge:
        """A judge over `model`, already loaded (e.g. from a pipeline's model registry)."""
        return Judge(model, self.retries, self.seed, self.sampling)


def load_judge(cfg: JudgeConfig) -> Judge:
    """Load the judge's model as `cfg` says and wrap it."""
    if get_backend(cfg.backend).api:
        options = {"base_url": cfg.base_url, **cfg.options}
    else:
        options = {"device": cfg.device, "dtype": cfg.dtype, **cfg.options}
    return cfg.build(load_model(cfg.model, cfg.backend, **options))
