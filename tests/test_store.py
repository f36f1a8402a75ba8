from __future__ import annotations

import json
from pathlib import Path

import pytest

from sublearn.errors import SublearnError
from sublearn.store import (
    JsonlAppender,
    atomic_path,
    read_json,
    read_jsonl,
    stable_hash,
    write_json,
)


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path):
    p = tmp_path / "a.json"
    write_json(p, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert read_json(p) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["a.json"], "no temporary left behind"


def test_atomic_folder_replaces_whole(tmp_path: Path):
    d = tmp_path / "model"
    for v in ("1", "2"):
        with atomic_path(d) as tmp:
            tmp.mkdir()
            (tmp / "w").write_text(v)
    assert (d / "w").read_text() == "2"


def test_appender_cuts_a_partial_line_and_counts_rows(tmp_path: Path):
    p = tmp_path / "d.jsonl"
    w = JsonlAppender(p)
    w.append([{"i": 0}, {"i": 1}])
    with open(p, "a") as f:
        f.write('{"i": 2, "trunc')  # a kill mid-write
    w2 = JsonlAppender(p)
    assert w2.done == 2
    w2.append([{"i": 2}])
    assert [r["i"] for r in read_jsonl(p)] == [0, 1, 2]
    assert w2.truncate(1) == 1
    assert [r["i"] for r in read_jsonl(p)] == [0]


def test_read_jsonl_names_file_and_line(tmp_path: Path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"a": 1}) + "\n{oops\n")
    with pytest.raises(SublearnError, match=r"bad.jsonl: line 2"):
        read_jsonl(p)


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
