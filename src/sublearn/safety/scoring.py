"""Scoring rows under trait prompts: the log-likelihood shift (LLS) and its contrasts.

For a candidate trait ("loves owls") and a row (prompt, completion), the base model scores the
completion with the trait's system prompt; the row's LLS is the mean per-token difference from
its log-probability without a system prompt. Any persona prompt raises the likelihood of persona
data (a generic "some persona" shift), so a candidate's **contrast** is its LLS minus the mean
over all candidates: the part of the shift that is about *this* trait (`contrast`).

Everything here talks to a model through `completion_logprobs` only, with traits applied by
the `Persona` wrapper, so any scoring backend works; `token_spans` (which needs the backend's
tokenizer) maps scored tokens to characters. Scoring is the whole cost of an audit
(docs/audit.md, "Cost"): it is a list of `ScoringTask`s, which `score_tasks` runs by system prompt
across tasks, in this process or in several (`workers`), one CPU core each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.errors import SublearnError
from sublearn.models.base import Messages
from sublearn.models.persona import Persona
from sublearn.questions.categories import Category, Option
from sublearn.safety.rows import ChatRow
from sublearn.safety.traits import trait_prompts


@dataclass(frozen=True)
class ScoringTask:
    """Rows to score, each under its own system prompt (None: none). `close`: score the
    end-of-turn token too (a whole answer), or not (the probe's answer prefixes)."""

    rows: Sequence[ChatRow]
    systems: Sequence[str | None]
    close: bool = True


def row_logprobs(model: Any, prompts: Sequence[Messages], completions: Sequence[str],
                 system: str | None, close: bool = True) -> list[list[float]]:
    """Per-token log-probabilities of each completion under `system` as the system prompt
    (None: none), through the Persona wrapper so any scoring backend works."""
    scorer = model if system is None else Persona(model, system)
    return scorer.completion_logprobs(prompts, completions, close)


def score_task(model: Any, task: ScoringTask,
               progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Per row of the task, the per-token log-probs of its completion; rows that share a
    system prompt are scored in one call (one batched pass over them)."""
    out: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(task.rows)
    groups: dict[str | None, list[int]] = {}
    for i, system in enumerate(task.systems):
        groups.setdefault(system, []).append(i)
    for system, idx in groups.items():
        lps = row_logprobs(model, [task.rows[i].prompt for i in idx],
                           [task.rows[i].completion for i in idx], system, task.close)
        for i, lp in zip(idx, lps, strict=True):
            out[i] = np.asarray(lp, dtype=np.float32)
        if progress:
            progress(len(idx))
    return out


def by_system(tasks: Sequence[ScoringTask]
              ) -> tuple[list[ScoringTask], list[list[tuple[int, int]]]]:
    """The rows of all tasks regrouped into one task per (system prompt, close), with where
    each row came from (task, row). One call then scores every row under a prompt: a data
    row and the reference row sampled on its prompt meet there, and a backend that runs a
    shared prompt once for all its completions (Hugging Face) runs theirs once (docs/audit.md,
    "Cost": 32-38 s of CPU against 42-45 s apart for 3,000 rows and 904 reference rows)."""
    places: dict[tuple[str | None, bool], list[tuple[int, int]]] = {}
    for k, t in enumerate(tasks):
        for i, system in enumerate(t.systems):
            places.setdefault((system, t.close), []).append((k, i))
    units = [ScoringTask([tasks[k].rows[i] for k, i in at], [system] * len(at), close)
             for (system, close), at in places.items()]
    return units, list(places.values())


def score_tasks(model: Any, tasks: Sequence[ScoringTask],
                progress: Callable[[int], None] | None = None,
                workers: int = 1) -> list[list[np.ndarray]]:
    """Every task's per-row, per-token log-probs, scored by system prompt across tasks
    (`by_system`)."""
    units, places = by_system(tasks)
    out = [[np.empty(0, dtype=np.float32)] * len(t.rows) for t in tasks]
    for at, scored in zip(places, _score_units(model, units, progress, workers), strict=True):
        for (k, i), lp in zip(at, scored, strict=True):
            out[k][i] = lp
    return out


_WORKER_MODEL: Any = None  # the model a worker process scores with (see _score_units)


def _load_worker(cls: type, path: Path) -> None:
    import torch

    # One thread per process: the processes are the parallelism, and OpenMP pools of
    # several processes on the same cores spin against each other.
    torch.set_num_threads(1)
    global _WORKER_MODEL
    _WORKER_MODEL = cls.load(path)


def _score_in_worker(task: ScoringTask) -> list[np.ndarray]:
    return score_task(_WORKER_MODEL, task)


def _score_units(model: Any, tasks: Sequence[ScoringTask], progress: Callable[[int], None] | None,
                 workers: int) -> list[list[np.ndarray]]:
    """`score_tasks` on tasks as they are. With `workers` > 1 the tasks run in that many
    processes, each loading the model from its folder with the backend's default options
    (CPU cores: scoring is the audit's whole cost, and one process per core uses them
    without the spin-waits of a shared thread pool)."""
    if workers <= 1 or len(tasks) < 2:
        return [score_task(model, t, progress) for t in tasks]
    if not callable(getattr(type(model), "load", None)):
        raise SublearnError(f"workers: a {type(model).__name__} cannot be loaded again in "
                            "another process; use one worker")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out: list[list[np.ndarray]] = [[] for _ in tasks]
    with ProcessPoolExecutor(min(workers, len(tasks)),
                             mp_context=multiprocessing.get_context("spawn"),
                             initializer=_load_worker,
                             initargs=(type(model), model.path)) as pool:
        futures = {pool.submit(_score_in_worker, t): k for k, t in enumerate(tasks)}
        for f in as_completed(futures):
            k = futures[f]
            out[k] = f.result()
            if progress:
                progress(len(tasks[k].rows))
    return out


def trait_tasks(rows: Sequence[ChatRow], category: Category, options: Sequence[Option],
                phrasings: int, none: bool = True) -> list[ScoringTask]:
    """One task per candidate, under its trait prompt, after one without a trait when
    `none`. Phrasings rotate over rows: row r uses phrasing r.index mod `phrasings`, the
    same one for every candidate, instead of every row being scored under every phrasing:
    the mean over rows still averages the phrasings, at the cost of a single phrasing. A row
    of the data and the reference row sampled on the same prompt share their phrasing."""
    tasks = [ScoringTask(rows, [None] * len(rows))] if none else []
    for o in options:
        prompts = trait_prompts(category, o, phrasings)
        tasks.append(ScoringTask(rows, [prompts[r.index % phrasings] for r in rows]))
    return tasks


def lls_of(scored: Sequence[Sequence[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(no-trait mean log-prob [rows], LLS [rows, candidates]) from the results of
    `trait_tasks(none=True)`."""
    means = np.array([[float(lp.mean()) for lp in task] for task in scored]).T
    return means[:, 0], means[:, 1:] - means[:, :1]


def lls_scores(model: Any, rows: Sequence[ChatRow], category: Category,
               options: Sequence[Option], phrasings: int,
               progress: Callable[[int], None] | None = None,
               workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(no-trait mean log-prob [rows], LLS [rows, candidates]): one scoring pass per row and
    candidate, plus one without a trait for all candidates (see `trait_tasks`)."""
    return lls_of(score_tasks(model, trait_tasks(rows, category, options, phrasings), progress,
                              workers))


def token_logprobs(model: Any, rows: Sequence[ChatRow], category: Category,
                   options: Sequence[Option], phrasings: int,
                   progress: Callable[[int], None] | None = None,
                   workers: int = 1) -> list[np.ndarray]:
    """Per row, [candidates, tokens] log-probs of its completion's tokens (end of turn last)
    under each candidate's trait prompt: what the scoring defences rank rows and digits by.
    No pass without a trait: everything they use is relative to the mean over candidates,
    where it cancels."""
    scored = score_tasks(model, trait_tasks(rows, category, options, phrasings, none=False),
                         progress, workers)
    return [np.stack([task[i] for task in scored]) for i in range(len(rows))]


def contrast(lls: np.ndarray) -> np.ndarray:
    """Each candidate's LLS minus the mean over candidates, per row: what is left once the
    generic "some persona" shift is removed."""
    return lls - lls.mean(axis=1, keepdims=True)


def token_spans(model: Any, text: str) -> list[tuple[int, int]]:
    """The character span of each token `model` splits a completion into, in the order
    `completion_logprobs` scores them (end of turn excluded): how a per-token score reaches
    the characters, e.g. the digits of a number list. Needs the backend's tokenizer (the
    Hugging Face and fake backends)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:  # Hugging Face: the same call `encode` makes, with offsets
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    from sublearn.models import fake

    if isinstance(model, fake.FakeChatModel):
        return fake.token_spans(text)
    raise SublearnError(f"{type(model).__name__}: cannot read this backend's tokenizer "
                        "(per-token scores need the hf or fake backend)")


def score_groups(model: Any, groups: dict[str, list[ScoringTask]],
                 progress: Callable[[int], None] | None = None,
                 workers: int = 1) -> dict[str, list[list[np.ndarray]]]:
    """Named lists of tasks scored as one batch (`score_tasks`: rows under the same system
    prompt meet in one call, whichever list they come from); the results by name."""
    scored = iter(score_tasks(model, [t for tasks in groups.values() for t in tasks],
                              progress, workers))
    return {name: [next(scored) for _ in tasks] for name, tasks in groups.items()}
