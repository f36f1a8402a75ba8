"""The OpenAI-compatible backend: sampling, top log-probs and fine-tuning over HTTP.

It talks to the OpenAI API, or to any server that speaks its protocol (vLLM's `serve`,
llama.cpp's server), through the official `openai` client, imported only when a request is
made. The client's own retries are switched off so that one policy, with one set of knobs,
governs every call: 429 and 5xx answers, timeouts, dropped connections and bodies cut short
are retried with exponential backoff and jitter, honouring `Retry-After`. Calls that create
something on the server (a file upload, a fine-tuning job) look for that thing before
creating it again, so an answer lost on the way back never causes a second upload or job.

The key is read by the client from OPENAI_API_KEY (the base URL from OPENAI_BASE_URL unless
given) and never passes through this module: it is not stored, logged or written, and every
message built from a server's answer goes through `redact` first.

Why one module: one retry policy and one record of what was created (`_State`) govern
every call (sampling, uploads, fine-tuning jobs); split across files, the guarantee that
nothing is created twice would be too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sublearn.errors import SublearnError
from sublearn.models.base import SAMPLE, TOP_LOGPROBS, TRAIN, Messages, SamplingConfig
from sublearn.store import read_json, stable_hash, write_json, write_text

if TYPE_CHECKING:
    from openai import OpenAI

    from sublearn.models.recipe import TrainingRecipe

log = logging.getLogger(__name__)
T = TypeVar("T")

REMOTE_MODEL = "remote_model.json"  # what makes a folder an API model (`finetune` writes it)
MAX_TOP_LOGPROBS = 20  # the most alternatives per token the API returns
JOB_TAG = "sublearn_job"  # metadata key that finds our own job again after a lost answer
_FAILED = ("failed", "cancelled")
_ENDED = ("succeeded", *_FAILED)

# The recipe fields a fine-tuning job honours. Every other field (LoRA shape, optimizer,
# schedule, learning rate, batch size, ...) describes our own loop and must keep its default,
# so a config cannot believe it trained with, say, SGD when the service chose its own.
_SENT = frozenset({"epochs", "labels", "loss_on", "seed"})

# Anything shaped like an OpenAI key, masked ones included ("sk-abc***xyz"): servers echo
# them in 401 messages.
_KEYLIKE = re.compile(r"\b(?:sk|rk)-[A-Za-z0-9_*\-]{6,}")


def redact(text: str) -> str:
    """`text` with the configured key and anything key-shaped replaced by ***."""
    key = os.environ.get("OPENAI_API_KEY", "")
    if len(key) >= 8:  # a placeholder such as "EMPTY" for a local server is not a secret
        text = text.replace(key, "***")
    return _KEYLIKE.sub("***", text)


def describe(err: BaseException) -> str:
    """One line about a failed call, safe to show anywhere."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return redact(text[:500])


class _BadAnswer(Exception):
    """A 200 answer without what was asked for: a proxy's HTML page, an empty choice list."""


class _Stopped(Exception):
    """Another row of the same batch failed for good; this one stops retrying."""


def _transient(err: BaseException) -> bool:
    """Would the same request, sent again later, plausibly succeed?"""
    import openai

    if isinstance(err, openai.APIStatusError):
        return err.status_code in (408, 409, 429) or err.status_code >= 500
    # APIConnectionError covers timeouts, resets and bodies shorter than their Content-Length;
    # a JSONDecodeError is a body cut short whose framing hid it.
    return isinstance(err, openai.APIConnectionError | json.JSONDecodeError | _BadAnswer)


def _retry_after(err: BaseException) -> float | None:
    """Seconds the server asked us to wait (Retry-After, in ms, seconds or as a date)."""
    headers = getattr(getattr(err, "response", None), "headers", None)
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def check_sampling(sampling: SamplingConfig) -> None:
    """Refuse decoding settings that chat completions cannot express (call it before a run)."""
    if sampling.min_prob > 0:
        raise SublearnError(
            "sampling.min_prob: the API has no probability-threshold sampler and shows at most "
            f"{MAX_TOP_LOGPROBS} alternatives per token, so it cannot be emulated; use the hf "
            "backend for this defence")
    if sampling.only_numbers or sampling.number_grammar:
        raise SublearnError(
            "sampling.only_numbers / number_grammar: the API cannot restrict decoding to number tokens (it does "
            "not expose its vocabulary to mask); leave it off and let the number filter drop "
            "off-task rows, or use the hf backend")


def fine_tune_hyperparameters(
    recipe: TrainingRecipe, batch_size: int | Literal["auto"], lr_multiplier: float | Literal["auto"]
) -> dict[str, Any]:
    """The supervised hyperparameters of a job; refuse recipe fields the service cannot honour.

    Epochs come from the recipe (whole numbers only). The recipe's `lr` and batch size describe
    our own loop: an absolute learning rate has no translation into the service's multiplier of
    its own base rate, so `batch_size` and `learning_rate_multiplier` are the backend's
    settings (`"auto"`, the paper's choice, unless given to `load`).
    """
    if recipe.labels == "soft":
        raise SublearnError("student.labels = 'soft': the API trains on text only and gives "
                            f"at most {MAX_TOP_LOGPROBS} log-probs per token; use hard labels")
    if recipe.loss_on != "completion":
        raise SublearnError("student.loss_on: the API trains on assistant replies only; "
                            "use 'completion'")
    if not float(recipe.epochs).is_integer():
        raise SublearnError(f"student.epochs = {recipe.epochs}: the API takes whole epochs")
    changed = [name for name, field in type(recipe).model_fields.items()
               if name not in _SENT
               and getattr(recipe, name) != field.get_default(call_default_factory=True)]
    if changed:
        raise SublearnError(
            f"student.{', student.'.join(changed)}: the fine-tuning API has no such setting "
            "(it chooses its own method and optimizer); leave them at their defaults")
    return {"n_epochs": int(recipe.epochs), "batch_size": batch_size,
            "learning_rate_multiplier": lr_multiplier}


def training_jsonl(rows: Sequence[dict[str, Any]]) -> str:
    """The upload: one {"messages": [...]} per row, in order, byte-stable for hashing."""
    if not rows:
        raise SublearnError("fine-tuning: no training rows")
    lines = []
    for i, row in enumerate(rows):
        messages = row.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else {}
        if last.get("role") != "assistant":
            raise SublearnError(f"fine-tuning row {i}: expected 'messages' ending with an "
                                "assistant reply")
        clean = [{"role": m["role"], "content": m["content"]} for m in messages]
        lines.append(json.dumps({"messages": clean}, ensure_ascii=False, sort_keys=True))
    return "\n".join(lines) + "\n"


def work_dir(out_dir: Path) -> Path:
    """Where a fine-tune keeps its upload and job state: beside `out_dir`, not inside it, so a
    caller that replaces `out_dir` wholesale (an atomic folder write) cannot erase the job id."""
    return out_dir.with_name(out_dir.name + ".openai")


def _reporter(progress: bool) -> Callable[[str], None]:
    if not progress:
        return lambda text: log.info("%s", redact(text))
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    return lambda text: console.print(redact(text), markup=False, soft_wrap=True)


class _State:
    """A small JSON file of what the server already holds, rewritten atomically on change."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = read_json(path) if path.exists() else {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def update(self, **values: Any) -> None:
        self.data.update(values)
        write_json(self.path, self.data)


class OpenAIChatModel:
    """A model behind an OpenAI-compatible endpoint: samples, top log-probs, remote fine-tuning.

    `model` is the service's model id; `path` is the folder it was loaded from (a fine-tuned
    student), or the id itself. Robustness knobs are parameters so that tests can shrink them:
    `timeout` per request, `max_attempts` per call, backoff `backoff_base * 2**(attempt-1)` s
    capped at `backoff_cap` (half fixed, half random), polling every `poll_interval` seconds
    growing to `poll_cap` while a job reports nothing new.
    """

    capabilities = frozenset({SAMPLE, TOP_LOGPROBS, TRAIN})

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        path: Path | None = None,
        *,
        concurrency: int = 8,
        timeout: float = 60.0,
        max_attempts: int = 10,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        poll_interval: float = 10.0,
        poll_cap: float = 120.0,
        ft_batch_size: int | Literal["auto"] = "auto",
        ft_lr_multiplier: float | Literal["auto"] = "auto",
    ):
        if concurrency < 1 or max_attempts < 1:
            raise SublearnError("openai backend: concurrency and max_attempts must be >= 1")
        self.model = model
        self.base_url = base_url
        self.path = path if path is not None else Path(model)
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.poll_interval = poll_interval
        self.poll_cap = poll_cap
        self.ft_batch_size = ft_batch_size
        self.ft_lr_multiplier = ft_lr_multiplier
        self._openai: OpenAI | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, path_or_model_id: str | Path, base_url: str | None = None, **kw: Any
    ) -> OpenAIChatModel:
        """A model id, or a folder holding `remote_model.json` (a fine-tuned student).

        The base URL given here wins over the folder's, which wins over OPENAI_BASE_URL.
        """
        folder = Path(path_or_model_id)
        record = folder / REMOTE_MODEL
        if record.is_file():
            spec = read_json(record)
            if spec.get("backend") != "openai" or not isinstance(spec.get("model"), str):
                raise SublearnError(f"{record}: not an openai model record")
            return cls(spec["model"], base_url or spec.get("base_url"), path=folder, **kw)
        if folder.is_dir():
            raise SublearnError(f"{folder}: a folder without {REMOTE_MODEL} is not an API "
                                "model; give a model id, or use the hf backend")
        return cls(str(path_or_model_id), base_url, **kw)

    # --- plumbing -----------------------------------------------------------------------
    def _client(self) -> OpenAI:
        with self._lock:
            if self._openai is None:
                import openai

                try:
                    self._openai = openai.OpenAI(
                        base_url=self.base_url, timeout=self.timeout, max_retries=0)
                except openai.OpenAIError as err:
                    raise SublearnError(
                        f"openai backend: {describe(err)} (a local server without keys "
                        "accepts any value, e.g. OPENAI_API_KEY=EMPTY)") from None
            return self._openai

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        # Half fixed, half random ("equal jitter"): threads that failed together spread out,
        # and none comes back at once.
        step = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)

    def _retrying(self, what: str, call: Callable[[], T], stop: threading.Event | None = None) -> T:
        """`call()`, retried while it fails transiently; a service's refusal or the last
        transient failure becomes a one-line SublearnError. Setting `stop` ends the waiting."""
        import openai

        stop = stop or threading.Event()
        attempt = 0
        while True:
            attempt += 1
            if stop.is_set():
                raise _Stopped
            try:
                return call()
            except Exception as err:
                if not _transient(err):
                    if isinstance(err, openai.OpenAIError):
                        raise SublearnError(f"{what}: {describe(err)}") from None
                    raise
                if attempt == self.max_attempts:
                    raise SublearnError(
                        f"{what}: gave up after {attempt} attempts: {describe(err)}") from None
                delay = self._backoff(attempt, _retry_after(err))
                log.info("%s: %s; retry %d of %d in %.2fs", what, describe(err), attempt,
                         self.max_attempts - 1, delay)
                if stop.wait(delay):
                    raise _Stopped from None

    def _each(self, what: str, fn: Callable[..., T], items: Sequence[tuple[Any, ...]]) -> list[T]:
        """fn(*item) for every item, `concurrency` at a time, in input order. The first failure
        stops the rest and is raised: a caller gets every result or none, which is what lets
        `sample_dataset` append whole chunks."""
        stop = threading.Event()
        workers = min(self.concurrency, max(1, len(items)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sublearn-openai")
        try:
            futures = [pool.submit(self._retrying, f"{what} (row {i})",
                                   lambda item=item: fn(*item), stop)
                       for i, item in enumerate(items)]
            wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
            return [f.result() for f in futures]
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _first_choice(self, answer: Any) -> Any:
        choices = getattr(answer, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise _BadAnswer("the answer holds no choice")
        return choices[0]

    # --- sampling -----------------------------------------------------------------------
    def generate(
        self, conversations: Sequence[Messages], sampling: SamplingConfig, seeds: Sequence[int]
    ) -> list[str]:
        """One completion per conversation, with the row's seed (a reproducibility hint to
        the service, exact on servers that honour it, e.g. vLLM)."""
        check_sampling(sampling)
        if len(conversations) != len(seeds):
            raise ValueError(f"{len(conversations)} conversations but {len(seeds)} seeds")
        params: dict[str, Any] = {"model": self.model, "temperature": sampling.temperature,
                                  "max_tokens": sampling.max_new_tokens, "n": 1}
        if sampling.top_p < 1:
            params["top_p"] = sampling.top_p
        client = self._client()

        def one(messages: Messages, seed: int) -> str:
            answer = client.chat.completions.create(messages=messages, seed=int(seed), **params)
            return self._first_choice(answer).message.content or ""

        return self._each("chat completion", one, list(zip(conversations, seeds, strict=True)))

    def top_logprobs(
        self, conversations: Sequence[Messages], k: int = 20
    ) -> list[dict[str, float]]:
        """The k most likely first tokens of each answer with their log-probabilities. Tokens
        that decode to the same text (different ids) are merged by adding probabilities."""
        if not 1 <= k <= MAX_TOP_LOGPROBS:
            raise SublearnError(f"top_logprobs: k must be 1..{MAX_TOP_LOGPROBS}, got {k}")
        client = self._client()

        def one(messages: Messages) -> dict[str, float]:
            answer = client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=1, logprobs=True,
                top_logprobs=k, seed=0)
            logprobs = getattr(self._first_choice(answer), "logprobs", None)
            content = getattr(logprobs, "content", None)
            if not content or not content[0].top_logprobs:
                raise SublearnError(f"{self.model}: the server returned no log-probabilities "
                                    "(does it support logprobs/top_logprobs?)")
            merged: dict[str, float] = {}
            for alt in content[0].top_logprobs:
                old = merged.get(alt.token)
                merged[alt.token] = alt.logprob if old is None else _logaddexp(old, alt.logprob)
            return merged

        return self._each("top log-probs", one, [(c,) for c in conversations])

    # --- fine-tuning --------------------------------------------------------------------
    def finetune(
        self,
        rows: Sequence[dict[str, Any]],
        recipe: TrainingRecipe,
        out_dir: Path,
        progress: bool = True,
    ) -> Path:
        """Fine-tune `self.model` on chat rows; `out_dir/remote_model.json` names the result.

        Resumable at every step: the upload and the job are recorded in `work_dir(out_dir)`
        the moment they exist, so a rerun after a crash or kill reuses the file and reattaches
        to the job instead of paying twice.
        """
        out_dir = Path(out_dir)
        hyper = fine_tune_hyperparameters(recipe, self.ft_batch_size, self.ft_lr_multiplier)
        text = training_jsonl(rows)
        sha = hashlib.sha256(text.encode()).hexdigest()
        key = stable_hash({"model": self.model, "training_sha256": sha, "hyperparameters": hyper,
                           "seed": recipe.seed}, length=16)
        record = out_dir / REMOTE_MODEL
        if record.is_file() and read_json(record).get("job_key") == key:
            return out_dir
        say = _reporter(progress)
        work = work_dir(out_dir)
        state = _State(work / "state.json")
        train = work / "train.jsonl"
        if not train.is_file() or hashlib.sha256(train.read_bytes()).hexdigest() != sha:
            write_text(train, text)

        file_id = state.get("file_id") if state.get("file_sha256") == sha else None
        if file_id is None:
            file_id = self._upload(train.read_bytes(), sha)
            state.update(file_sha256=sha, file_id=file_id)
            say(f"training file {file_id} on the server ({len(rows)} rows)")
        job_id = state.get("job_id") if state.get("job_key") == key else None
        if job_id is None:
            job_id = self._create_job(file_id, hyper, recipe.seed, key)
            state.update(job_key=key, job_id=job_id)  # on disk before any waiting
            say(f"created fine-tuning job {job_id} (state in {work})")
        else:
            say(f"reattaching to fine-tuning job {job_id}")
        model_id = self._wait(job_id, work, say)
        write_json(record, {
            "backend": "openai", "model": model_id,
            "base_url": self.base_url or os.environ.get("OPENAI_BASE_URL"),
            "base_model": self.model, "job_id": job_id, "job_key": key,
            "training_file": file_id, "training_sha256": sha, "hyperparameters": hyper,
        })
        say(f"fine-tuned model {model_id}")
        return out_dir

    def _upload(self, data: bytes, sha: str) -> str:
        client = self._client()
        name = f"sublearn-{sha[:32]}.jsonl"  # the content hash, visible in the server's list

        def once() -> str:
            # An upload whose answer was lost may have landed: look before sending again.
            for f in client.files.list(purpose="fine-tune").data:
                if f.filename == name and f.bytes == len(data):
                    return f.id
            return client.files.create(file=(name, data), purpose="fine-tune").id

        return self._retrying("uploading the training file", once)

    def _create_job(self, file_id: str, hyper: dict[str, Any], seed: int, key: str) -> str:
        client = self._client()
        # `metadata` and `method` go in the body by hand: clients before 1.58 (the extra
        # allows 1.40) have no parameters for them, and servers have accepted them longer.
        body = {"metadata": {JOB_TAG: key},
                "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}}}

        def once() -> str:
            # A creation whose answer was lost may have landed: find our job by its tag among
            # the newest. A failed or cancelled one is not reused, so that removing the work
            # folder starts afresh.
            for job in client.fine_tuning.jobs.list(limit=100).data:
                tag = (getattr(job, "metadata", None) or {}).get(JOB_TAG)
                if tag == key and job.status not in _FAILED:
                    return job.id
            return client.fine_tuning.jobs.create(
                model=self.model, training_file=file_id, seed=seed, extra_body=body).id

        return self._retrying("creating the fine-tuning job", once)

    def _wait(self, job_id: str, work: Path, say: Callable[[str], None]) -> str:
        """Poll until the job ends, showing its events; the fine-tuned model id."""
        client = self._client()
        what = f"polling fine-tuning job {job_id} (a rerun reattaches to it)"
        seen: set[str] = set()
        interval = self.poll_interval
        while True:
            job = self._retrying(what, lambda: client.fine_tuning.jobs.retrieve(job_id))
            # Events after the status, so that a job seen ending shows its last events too.
            events = self._retrying(what, lambda: client.fine_tuning.jobs.list_events(
                job_id, limit=100).data)
            # The service lists newest first; show oldest first.
            fresh = sorted((e for e in reversed(events) if e.id not in seen),
                           key=lambda e: e.created_at)
            for event in fresh:
                seen.add(event.id)
                say(f"{job_id}: {event.message}")
            if job.status in _ENDED:
                break
            interval = self.poll_interval if fresh else min(self.poll_cap, interval * 1.5)
            time.sleep(interval)
        if job.status == "succeeded" and job.fine_tuned_model:
            return job.fine_tuned_model
        if job.status == "succeeded":
            reason = "but names no fine-tuned model"
        elif job.error is not None and job.error.message:
            reason = job.error.message
        else:
            reason = "the service gave no reason"
        raise SublearnError(redact(" ".join(
            f"fine-tuning job {job_id} {job.status}: {reason} (remove {work} to start a new "
            "job)".split())))


@dataclass(frozen=True)
class Prices:
    """US dollars per million tokens. Prices change and differ by model, so none are assumed:
    pass the ones on your provider's price page today."""

    input: float
    output: float
    training: float


@dataclass(frozen=True)
class CostEstimate:
    prompt_tokens: int
    completion_tokens: int  # an upper bound: every completion as long as its limit
    training_tokens: int
    finetune_jobs: int
    dollars: float | None  # None without prices

    def __add__(self, other: CostEstimate) -> CostEstimate:
        dollars = (None if self.dollars is None or other.dollars is None
                   else self.dollars + other.dollars)
        return CostEstimate(self.prompt_tokens + other.prompt_tokens,
                            self.completion_tokens + other.completion_tokens,
                            self.training_tokens + other.training_tokens,
                            self.finetune_jobs + other.finetune_jobs, dollars)

    def summary(self) -> str:
        money = "" if self.dollars is None else f"; at the given prices about ${self.dollars:,.2f}"
        return (f"at most {self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion "
                f"tokens sampled, {self.training_tokens:,} tokens trained in "
                f"{self.finetune_jobs} fine-tuning job(s){money}")


def estimate_cost(
    *,
    requests: int,
    prompt_tokens: float,
    max_completion_tokens: int,
    train_rows: int = 0,
    row_tokens: float = 0.0,
    epochs: int = 0,
    jobs: int = 0,
    prices: Prices | None = None,
) -> CostEstimate:
    """Tokens and jobs a run will pay for, from counts the caller measured.

    Sampling: `requests` chat completions of `prompt_tokens` each (mean, system prompt and
    chat overhead included), each at most `max_completion_tokens` long. Fine-tuning: `jobs`
    jobs of `train_rows` rows of `row_tokens` tokens (mean), seen `epochs` times. Sum stages
    with `+`.
    """
    counts = (requests, prompt_tokens, max_completion_tokens, train_rows, row_tokens, epochs, jobs)
    if min(counts) < 0:
        raise ValueError("estimate_cost: counts must be non-negative")
    prompt = round(requests * prompt_tokens)
    completion = requests * max_completion_tokens
    training = round(jobs * train_rows * row_tokens * epochs)
    dollars = None if prices is None else (
        prompt * prices.input + completion * prices.output + training * prices.training) / 1e6
    return CostEstimate(prompt, completion, training, jobs, dollars)
