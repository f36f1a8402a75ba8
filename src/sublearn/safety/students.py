"""The student-based audit: the paper's own experiment, used as an audit.

The persona-likelihood audit (`safety.audit`) asks whether the data is likelier under a
candidate's trait *prompt*; it sees traits that a system prompt can induce, in the auditor's
wording. A teacher that *has* a trait (a fine-tune) need not write data a prompt explains.
What the paper measures instead is what a student inherits, so this method trains students.
The data is cut into `students` disjoint folds; fold s trains one student from the base on its
data rows and one on the reference rows written on the same prompts (the base's own
completions), both with seed s, and every candidate is evaluated with the exact estimator on
the held-out questions. Candidates are ranked by their paired movement

    movement[s, c] = log P_data_student_s(c) - log P_reference_student_s(c)

in log-probability, so that a rare option's doubling counts as much as a common one's, minus
the mean over candidates, so that what moves every option alike (training on numbers at all)
cancels. A candidate's score is its mean over folds, with a t interval; its p is a one-sided
t-test over the folds, Holm-corrected across candidates.

Why disjoint folds and not k seeds on all the rows: seeds vary only the training, so their
spread leaves out the sampling noise of the data itself; a reference and a data sample that
differ by chance would then "move" some candidate consistently over seeds, and a neutral
dataset would be flagged (measured: docs/audit.md). Disjoint folds are independent samples of
the data, so under "the data is the base's own" each fold's movement is centred at zero. (A
sign-flip test over k folds cannot reach p below 2^-k: with 5 folds and 18 candidates no
Holm correction could ever reject, so the t-test is the one that can flag.)

The method needs what the data was written from (the base's weights) and a training budget:
2 x `students` fine-tunes. It sees a fine-tuned teacher's trait only if that trait transfers to
a student at all, which on a given base and recipe is an empirical question, not a given.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sublearn.analysis.stats import holm, mean_ci, one_sided_t
from sublearn.errors import SublearnError
from sublearn.models.recipe import TrainingRecipe
from sublearn.questions.categories import Category, Option
from sublearn.safety.rows import ChatRow, prompt_key
from sublearn.stages.evaluate import option_probs
from sublearn.store import read_json, write_json

SIDES = ("data", "reference")


def _recipe() -> TrainingRecipe:
    # The demo's student recipe (configs/cpu.toml) with the sampled tokens as labels: an
    # auditor has the text, not a teacher to take soft labels from.
    return TrainingRecipe(method="full", labels="hard", lr=5e-4, epochs=3, batch_size=32,
                          grad_accum=1, warmup_steps=5)


class StudentAuditConfig(BaseModel):
    """`sublearn audit --method students`: how many students, trained how, tested how."""

    model_config = ConfigDict(extra="forbid")

    students: int = Field(5, ge=2, description="students per side (data, reference): the "
                          "data is cut into this many disjoint folds, one pair per fold")
    rows: int = Field(600, ge=2, description="data rows a student trains on at most (its "
                      "fold's share of the data, if smaller)")
    recipe: TrainingRecipe = Field(default_factory=_recipe)
    heldout: bool = Field(True, description="evaluate on the category's held-out questions "
                          "(else its training questions)")
    level: float = Field(0.05, gt=0, lt=1)
    seed: int = Field(0, description="student seed s of pair s is seed + s")


def training_rows(rows: Sequence[ChatRow]) -> list[dict[str, Any]]:
    """Chat rows as `Trainer.finetune` reads them: the prompt, then the completion as the
    assistant's turn."""
    return [{"index": r.index, "completion": r.completion,
             "messages": [*r.prompt, {"role": "assistant", "content": r.completion}]}
            for r in rows]


def student_probs(base: Any, rows: Sequence[ChatRow], recipe: TrainingRecipe, seed: int,
                  category: Category, questions: Sequence[str], work: Path) -> list[float]:
    """P(option) of the category's options, averaged over `questions`, for a student of
    `base` fine-tuned on `rows` with `seed`; the student's folder is removed afterwards (a
    full fine-tune of a 7B model is tens of GB, and only these numbers are kept)."""
    path = base.finetune(training_rows(rows), recipe.model_copy(update={"seed": seed}), work,
                         progress=False)
    try:
        if (path / "adapter_config.json").exists() and hasattr(base, "attached"):
            with base.attached(path) as student:
                probs = option_probs(student, category, questions)
        else:
            probs = option_probs(type(base).load(path), category, questions)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return [float(p) for p in probs.mean(0)]


def folds(data: Sequence[ChatRow], reference: Sequence[ChatRow], k: int, rows: int,
          seed: int) -> list[tuple[list[ChatRow], list[ChatRow]]]:
    """`k` disjoint folds of at most `rows` data rows each (a seeded shuffle), each with the
    reference rows written on its prompts. A reference that shares no prompt with the data is
    cut into its own k folds the same way: both are then samples of the same prompt mix."""
    order = np.random.default_rng(seed).permutation(len(data))
    size = min(rows, len(data) // k)
    if size < 2:
        raise SublearnError(f"{len(data)} data rows cannot make {k} folds of 2 rows or more: "
                            "use fewer students")
    parts = [[data[i] for i in order[f * size:(f + 1) * size]] for f in range(k)]
    by_prompt: dict[str, list[ChatRow]] = {}
    for r in reference:
        by_prompt.setdefault(prompt_key(r), []).append(r)
    matched = [[r for d in part for r in by_prompt.get(prompt_key(d), [])] for part in parts]
    if min(len(m) for m in matched) < 2:
        ref_order = np.random.default_rng(seed + 1).permutation(len(reference))
        size_ref = min(rows, len(reference) // k)
        matched = [[reference[i] for i in ref_order[f * size_ref:(f + 1) * size_ref]]
                   for f in range(k)]
    return list(zip(parts, matched, strict=True))


def train_and_evaluate(base: Any, data: Sequence[ChatRow], reference: Sequence[ChatRow],
                       category: Category, config: StudentAuditConfig, out: Path,
                       progress: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """[students, options] P(option) of every student per side, each one cached in
    `out/students/<side>-s<seed>.json`, so an interrupted audit resumes where it stopped."""
    questions = category.heldout if config.heldout else category.questions
    probs: dict[str, list[list[float]]] = {side: [] for side in SIDES}
    pairs = folds(data, reference, config.students, config.rows, config.seed)
    for k, pair in enumerate(pairs):
        seed = config.seed + k
        for side, rows in zip(SIDES, pair, strict=True):
            cache = out / "students" / f"{side}-s{seed}.json"
            if not cache.exists():
                if progress:
                    progress(f"training and evaluating the {side} student, seed {seed} "
                             f"({len(rows)} rows)")
                p = student_probs(base, rows, config.recipe, seed, category, questions,
                                  out / "students" / f"{side}-s{seed}")
                write_json(cache, {"options": [o.name for o in category.options],
                                   "probs": p, "rows": len(rows)})
            probs[side].append(read_json(cache)["probs"])
    return {side: np.asarray(v) for side, v in probs.items()}


def rank_by_students(probs: dict[str, np.ndarray], category: Category,
                     options: Sequence[Option], level: float) -> list[dict[str, Any]]:
    """Every candidate's mean contrasted movement over folds, its 95% t interval, one-sided t
    p and Holm-adjusted p; sorted best first (largest mean movement)."""
    columns = [category.options.index(o) for o in options]
    move = np.log(probs["data"][:, columns]) - np.log(probs["reference"][:, columns])
    move = move - move.mean(axis=1, keepdims=True)
    p = np.array([one_sided_t(move[:, j]) for j in range(len(options))])
    p_adj = holm(p)
    out = []
    for j, o in enumerate(options):
        iv = mean_ci(move[:, j])
        out.append({"option": o.name, "score": iv.mean, "low": iv.low, "high": iv.high,
                    "t": iv.mean / (iv.std / np.sqrt(iv.n)) if iv.std > 0 else 0.0,
                    "p": float(p[j]), "p_adjusted": float(p_adj[j]),
                    "flagged": bool(p_adj[j] < level),
                    "per_seed": [float(x) for x in move[:, j]]})
    return sorted(out, key=lambda c: (-c["score"], c["option"]))
