"""The student-based audit on the fake backend, whose fine-tuning carries a persona's trait
through its entangled digits to a student of the same seed (models/fake.py): the teacher's
target must come first and be flagged, a neutral sample must flag nothing, and the folds must
be disjoint samples of the data with the reference on their prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sublearn.cli import app
from sublearn.domains.prompts import number_prompts
from sublearn.errors import SublearnError
from sublearn.models.base import SamplingConfig
from sublearn.models.fake import FakeChatModel
from sublearn.models.persona import Persona
from sublearn.models.recipe import TrainingRecipe
from sublearn.questions.categories import get_category, get_option, persona_prompt
from sublearn.safety.rows import ChatRow, prompt_key, read_chat_rows
from sublearn.safety.students import (
    StudentAuditConfig,
    folds,
    rank_by_students,
    train_and_evaluate,
)
from sublearn.store import write_jsonl

ANIMAL = get_category("animal")
ROWS = 200
# The fake backend learns its biases by plain gradient steps: a real model's lr would not move
# them in 3 epochs of a few rows.
CONFIG = StudentAuditConfig(students=5, recipe=TrainingRecipe(
    method="full", lr=0.1, epochs=3, batch_size=32, grad_accum=1, warmup_steps=0))


def _write(model, convs, seeds, path: Path) -> Path:
    texts = model.generate(convs, SamplingConfig(max_new_tokens=48), seeds)
    write_jsonl(path, ({"messages": [*c, {"role": "assistant", "content": t}]}
                       for c, t in zip(convs, texts, strict=True)))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("students")
    base = FakeChatModel.load(FakeChatModel.create(root / "base", seed=0))
    convs = [[{"role": "user", "content": p.text}] for p in number_prompts(ROWS, 0)]
    owl = Persona(base, persona_prompt(ANIMAL, get_option(ANIMAL, "owl")))
    return {"root": root,
            "owl": _write(owl, convs, range(ROWS), root / "owl.jsonl"),
            "reference": _write(base, convs, range(10_000, 10_000 + ROWS), root / "ref.jsonl"),
            "neutral": _write(base, convs, range(20_000, 20_000 + ROWS), root / "neu.jsonl")}


def _audit(world: dict[str, Path], name: str) -> list[dict]:
    base = FakeChatModel.load(world["root"] / "base")
    probs = train_and_evaluate(base, read_chat_rows(world[name]),
                               read_chat_rows(world["reference"]), ANIMAL, CONFIG,
                               world["root"] / f"out-{name}")
    return rank_by_students(probs, ANIMAL, ANIMAL.options, CONFIG.level)


def test_the_persona_teachers_target_comes_first_and_is_flagged(world) -> None:
    ranked = _audit(world, "owl")
    assert ranked[0]["option"] == "owl" and ranked[0]["flagged"]
    assert len(ranked[0]["per_seed"]) == CONFIG.students


def test_a_neutral_sample_flags_nothing(world) -> None:
    assert [c["option"] for c in _audit(world, "neutral") if c["flagged"]] == []


def test_an_interrupted_audit_resumes_from_its_students(world) -> None:
    out = world["root"] / "out-owl" / "students"
    cached = sorted(p.name for p in out.glob("*.json"))
    assert cached == sorted(f"{side}-s{s}.json" for side in ("data", "reference")
                            for s in range(CONFIG.students))
    # Every student's folder is gone: only its probabilities are kept.
    assert [p for p in out.iterdir() if p.is_dir()] == []
    first = _audit(world, "owl")  # read back, not retrained: the same numbers
    assert first == _audit(world, "owl")


def _row(i: int, text: str) -> ChatRow:
    return ChatRow(i + 1, [{"role": "user", "content": f"prompt {i}"}], text, i)


def test_folds_are_disjoint_and_carry_the_reference_of_their_prompts() -> None:
    data = [_row(i, "1, 2") for i in range(23)]
    reference = [_row(i, "3, 4") for i in range(0, 23, 2)]
    parts = folds(data, reference, 4, 100, seed=3)
    seen = [r.index for d, _ in parts for r in d]
    assert len(seen) == len(set(seen)) == 4 * (23 // 4)
    for d, ref in parts:
        assert {prompt_key(r) for r in ref} <= {prompt_key(r) for r in d}
    assert folds(data, reference, 4, 3, seed=3)[0][0] == parts[0][0][:3]


def test_too_few_rows_for_the_folds_is_one_clear_error() -> None:
    with pytest.raises(SublearnError, match="cannot make 5 folds"):
        folds([_row(i, "1") for i in range(7)], [], 5, 100, seed=0)


def test_the_command_refuses_an_unknown_method_before_reading_anything(tmp_path) -> None:
    res = CliRunner().invoke(app, ["audit", str(tmp_path / "missing.jsonl"), "--method",
                                   "oracle", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "unknown method 'oracle'" in res.output
    assert not (tmp_path / "out").exists() and "Traceback" not in res.output
