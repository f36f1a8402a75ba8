"""How much of a teacher's trait its numbers could carry, measured before any student trains.

On completions the neutral base wrote, score every token under the teacher, the other-target
teacher and the base itself, and average two per-token gaps in log-probability:

- shift: teacher vs base, how far the trait moves the number distribution at all;
- specificity: teacher vs other-target teacher, how much of that move is about *this* target
  rather than about having any persona.

A student can only learn a target-specific trait from a target-specific difference. Earlier
prototypes found bases where the persona moved the numbers a lot but the owl and fox teachers
moved them the same way: their students moved by the same amount, the generic effect that only
the other-target control exposes. The ratio specificity / shift is computed from the data
alone, so it can rank bases blind to the outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sublearn.models.base import Scorer


def _token_logprobs(model: Scorer, rows: Sequence[dict[str, Any]]) -> np.ndarray:
    convs = [r["messages"][:-1] for r in rows]
    comps = [r["completion"] for r in rows]
    return np.concatenate([np.asarray(x) for x in model.completion_logprobs(convs, comps)])


def channel(teacher: Scorer, other: Scorer, base: Scorer,
            rows: Sequence[dict[str, Any]], n: int = 256) -> dict[str, float]:
    """Per-token mean |log p| gaps on the first `n` rows (by prompt index)."""
    rows = sorted(rows, key=lambda r: r["index"])[:n]
    t, o, b = (_token_logprobs(m, rows) for m in (teacher, other, base))
    shift = float(np.abs(t - b).mean())
    specificity = float(np.abs(t - o).mean())
    return {"rows": len(rows), "tokens": int(t.size), "shift": shift,
            "specificity": specificity, "ratio": specificity / max(shift, 1e-12)}
