"""The one cache of trait scores: each row's completion, token by token, under every candidate's
trait prompt, by the base.

The scoring defences (`safety.defences`) rank rows and digits by these, and `sublearn defend`
audits defended data by them. A row is scored under every candidate of the category, with the
audit's trait phrasings rotated over rows (`scoring.trait_tasks`), and stored with each token's
characters (`scoring.token_spans`) in one safetensors file per artifact, keyed by the row
(`index_key` or `text_key`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sublearn.errors import SublearnError
from sublearn.questions.categories import Category
from sublearn.safety.rows import parse_chat_row
from sublearn.safety.scoring import contrast, token_logprobs, token_spans
from sublearn.safety.traits import AUDIT_TEMPLATES
from sublearn.store import atomic_path, locked, stable_hash

PipelineRow = dict[str, Any]  # a pipeline row: index, messages, completion


@dataclass(frozen=True)
class TokenScores:
    """One row's completion under every candidate's trait prompt, by the base."""

    logprobs: np.ndarray  # [candidates, tokens], the end-of-turn token last
    spans: np.ndarray  # [tokens - 1, 2]: each completion token's characters [start, end)


# What a scoring defence reads rows by: a `TraitScores`, or anything that answers like one.
Scores = Callable[[Sequence[PipelineRow]], list[TokenScores]]


def row_scores(scores: Sequence[TokenScores]) -> np.ndarray:
    """[rows, candidates]: the audit's per-row score, each candidate's mean log-prob of the
    completion (end of turn included) minus the mean over candidates. That is the row's LLS
    contrasted across candidates: the no-trait log-prob cancels, so it is not scored."""
    return contrast(np.array([s.logprobs.mean(axis=1) for s in scores]))


def index_key(row: PipelineRow) -> str:
    """A row of one dataset: its prompt index names it."""
    return str(row["index"])


def text_key(row: PipelineRow) -> str:
    """A row of any text (a defence may rewrite it): its prompt and completion name it."""
    return stable_hash([row["index"], row["messages"][:-1], row["completion"]])


class TraitScores:
    """The rows' `TokenScores`, computed once and kept in `path` (safetensors).

    Which rows the file holds: `universe` (all rows of a dataset, so every seed's subsample is
    covered), else the rows first asked for; once written, calls for rows it does not hold
    fail loudly. With `grow`, rows it does not hold are scored and added instead (defended
    rows, which no dataset holds). `key` names a row in the file."""

    def __init__(self, path: Path, model: Callable[[], Any], category: Category,
                 universe: Sequence[PipelineRow] | None = None,
                 log: Callable[[str], None] = lambda _: None, *,
                 key: Callable[[PipelineRow], str] = index_key, grow: bool = False):
        self.path, self.model, self.category = path, model, category
        self.universe, self.log, self.key, self.grow = universe, log, key, grow
        self._table: dict[str, np.ndarray] | None = None

    def __call__(self, rows: Sequence[PipelineRow]) -> list[TokenScores]:
        if self._table is None or (self.grow and self._missing(rows)):
            with locked(self.path):
                self._table = self._load()
                # A fixed file is written once, for its universe when it has one.
                todo = self._missing(rows) if self.grow or not self._table else []
                if todo and not self.grow and self.universe is not None:
                    todo = list(self.universe)
                if todo:
                    self._table.update(self._compute(todo))
                    self._save()
        try:
            return [TokenScores(self._table[f"{k}.logprobs"], self._table[f"{k}.spans"])
                    for k in map(self.key, rows)]
        except KeyError as e:
            raise SublearnError(f"{self.path.name}: row {e} was not scored") from None

    def means(self, rows: Sequence[PipelineRow]) -> np.ndarray:
        """[rows, candidates]: each row's mean log-prob per token under each candidate."""
        return np.array([s.logprobs.mean(axis=1) for s in self(rows)])

    def _missing(self, rows: Sequence[PipelineRow]) -> list[PipelineRow]:
        table = self._table or {}
        return [r for r in rows if f"{self.key(r)}.logprobs" not in table]

    def _load(self) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        return dict(load_file(str(self.path))) if self.path.exists() else {}

    def _save(self) -> None:
        from safetensors.numpy import save_file

        with atomic_path(self.path) as tmp:
            save_file(self._table or {}, str(tmp))

    def _compute(self, rows: Sequence[PipelineRow]) -> dict[str, np.ndarray]:
        self.log(f"scoring {len(rows)} rows under {len(self.category.options)} trait prompts "
                 f"({self.path.name})")
        model = self.model()
        chat = [parse_chat_row(r, 0, r["index"], f"{self.path.name}: row {i}")
                for i, r in enumerate(rows)]
        lps = token_logprobs(model, chat, self.category, self.category.options,
                             len(AUDIT_TEMPLATES))
        table = {}
        for r, lp in zip(rows, lps, strict=True):
            spans = np.array(token_spans(model, r["completion"]), dtype=np.int32).reshape(-1, 2)
            if len(spans) != lp.shape[1] - 1:
                raise SublearnError(f"row {r['index']}: the tokenizer split the completion into "
                                    f"{len(spans)} tokens, the scorer into {lp.shape[1] - 1}")
            table[f"{self.key(r)}.logprobs"] = lp
            table[f"{self.key(r)}.spans"] = spans
        return table
