"""Sampling: one completion per prompt through the model layer, in resumable chunks.

Row i is sampled with seed (sampling_seed, i), so a chunk's output does not depend on which
chunks ran before it, or on batch size: a killed run resumes at the last complete chunk and
produces the same bytes an uninterrupted run would have.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sublearn.domains.base import Prompt
from sublearn.models.base import Sampler, SamplingConfig
from sublearn.store import JsonlAppender, stable_hash


def row_seed(sampling_seed: int, index: int) -> int:
    return int(stable_hash([sampling_seed, index], length=15), 16)


def sample_dataset(
    model: Sampler,
    prompts: Sequence[Prompt],
    sampling: SamplingConfig,
    sampling_seed: int,
    out: Path,
    chunk: int = 256,
    progress: bool = True,
    label: str = "sampling",
) -> Path:
    """Write `out` (JSONL, chat rows) with one completion per prompt; resume a partial run."""
    if out.exists():
        return out
    partial = out.with_suffix(".partial.jsonl")
    writer = JsonlAppender(partial)
    # Resume on a chunk boundary, so every batch holds exactly the rows it would have held in
    # an uninterrupted run (padding, and so the floating-point sums, stay the same).
    done = writer.truncate(writer.done - writer.done % chunk)

    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(label, total=len(prompts), completed=done)
        for start in range(done, len(prompts), chunk):
            batch = prompts[start : start + chunk]
            convs = [[{"role": "user", "content": p.text}] for p in batch]
            seeds = [row_seed(sampling_seed, p.index) for p in batch]
            texts = model.generate(convs, sampling, seeds)
            writer.append(
                {
                    "index": p.index,
                    "completion": t,
                    "messages": [*c, {"role": "assistant", "content": t}],
                }
                for p, c, t in zip(batch, convs, texts, strict=True)
            )
            bar.advance(task, len(batch))
    os.replace(partial, out)
    return out
