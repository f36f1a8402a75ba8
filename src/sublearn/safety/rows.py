"""Chat rows: what the audit and the scoring defences read, and how a reference is matched.

A row is a prompt and the completion written for it (the last assistant turn). It comes from
a chat JSONL file (`sublearn audit`'s input, `sublearn run`'s datasets), from a pipeline row
(`parse_chat_row` on a dict), or from a model the audit samples itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from sublearn.domains.filters import parse_numbers
from sublearn.errors import SublearnError
from sublearn.models.base import Messages


@dataclass(frozen=True)
class ChatRow:
    """One row of chat data: the prompt before its last assistant turn, and that turn."""

    line: int  # 1-based line in the file it came from (0 for rows the audit sampled)
    prompt: Messages  # system messages removed: the trait prompt takes that place
    completion: str
    index: int  # the row's "index" field when it has one, else its position

    def record(self) -> dict[str, Any]:
        """The row as a chat JSONL line (`sublearn run`'s form), which `read_chat_rows` reads."""
        return {"index": self.index, "completion": self.completion,
                "messages": [*self.prompt, {"role": "assistant", "content": self.completion}]}


Row = TypeVar("Row")  # a ChatRow, or a pipeline row (a dict) matched by its prompt index


def _messages(obj: Any, where: str) -> list[dict[str, str]]:
    msgs = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise SublearnError(f"{where}: expected an object with a non-empty 'messages' list")
    for k, m in enumerate(msgs):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):
            raise SublearnError(f"{where}: messages[{k}] must be an object with string "
                                "'role' and 'content'")
    return msgs


def parse_chat_row(obj: Any, line: int, position: int, where: str) -> ChatRow:
    msgs = _messages(obj, where)
    last = max((k for k, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        raise SublearnError(f"{where}: no assistant turn in 'messages'")
    prompt = [m for m in msgs[:last] if m["role"] != "system"]
    if not prompt:
        raise SublearnError(f"{where}: no prompt before the last assistant turn")
    index = obj.get("index")
    return ChatRow(line, prompt, msgs[last]["content"],
                   index if isinstance(index, int) and not isinstance(index, bool) else position)


def read_chat_rows(path: str | Path) -> list[ChatRow]:
    """Chat JSONL rows; any problem is one SublearnError naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SublearnError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SublearnError(f"{path}: cannot read ({e})") from None
    rows: list[ChatRow] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SublearnError(f"{where}: invalid JSON ({e.msg})") from None
        rows.append(parse_chat_row(obj, lineno, len(rows), where))
    if not rows:
        raise SublearnError(f"{path}: no rows")
    return rows


def strict_numbers(rows: Sequence[ChatRow]) -> bool:
    """Whether every completion passes the strict number rule (then a sampled reference is
    filtered by it too, so data and reference have the same form)."""
    return all(parse_numbers(r.completion) is not None for r in rows)


def subset(rows: Sequence[ChatRow], n: int, seed: int) -> list[ChatRow]:
    """At most `n` rows, a seeded random choice, in their original order."""
    if len(rows) <= n:
        return list(rows)
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))
    return [rows[i] for i in keep]


def prompt_key(row: ChatRow) -> str:
    return json.dumps(row.prompt, sort_keys=True)


def on_data_prompts(reference: Sequence[Row], data: Sequence[Row],
                    key: Callable[[Row], Hashable] = prompt_key) -> tuple[list[Row], bool]:
    """The reference rows written on the data's prompts, and whether there were enough (2)
    to test with; else the whole reference. A filter keeps a teacher's rows on some prompts
    and the reference's on others, and a trait prompt shifts LLS more on some prompts than
    on others: comparing two prompt mixes credits the mix to the trait (measured on fox
    persona data: z 8.4 against a whole 400-prompt reference, 4.0 on the data's prompts)."""
    prompts = {key(r) for r in data}
    matched = [r for r in reference if key(r) in prompts]
    return (matched, True) if len(matched) >= 2 else (list(reference), False)
