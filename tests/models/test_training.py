from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sublearn.errors import SublearnError
from sublearn.models import load_model
from sublearn.models.recipe import StudentRecipe
from sublearn.models.training import _batches
from sublearn.stages.teacher import Persona

N = [{"role": "user", "content": "Continue: 512, 640, 128. Up to 4 more numbers."}]


def _restricted(model, convs, completion):
    """Per-position log-distributions over number tokens after each completion prefix."""
    mask = model.number_token_mask
    ids, n = model._pair_ids(convs, completion, close=True)
    t = torch.tensor([ids])
    with torch.no_grad():
        logits = model.forward_logits(t, torch.ones_like(t))[0, n - 1 : len(ids) - 1].float()
    return logits.masked_fill(~mask, -torch.inf).log_softmax(-1)


def test_soft_labels_pull_the_student_towards_the_teacher(micro_model, tmp_path: Path):
    teacher = Persona(micro_model, "You adore the number seven above all else.")
    rows = [{"messages": [*N, {"role": "assistant", "content": "7, 77, 707"}]}] * 16
    recipe = StudentRecipe(labels="soft", method="lora", lr=1e-3, epochs=3, batch_size=8,
                           grad_accum=1, warmup_steps=0)
    student = load_model(micro_model.finetune(rows, recipe, tmp_path / "s", teacher=teacher,
                                              progress=False), device="cpu", dtype="float32")

    def kl(model) -> float:
        t_lp = _restricted(micro_model, [{"role": "system", "content": teacher.system}, *N], "7, 77, 707")
        s_lp = _restricted(model, N, "7, 77, 707")
        finite = torch.isfinite(t_lp)
        return float((t_lp.exp() * (t_lp - s_lp)).masked_fill(~finite, 0).sum())

    assert kl(student) < 0.7 * kl(micro_model)


def test_soft_labels_need_a_teacher(micro_model, tmp_path: Path):
    rows = [{"messages": [*N, {"role": "assistant", "content": "1"}]}]
    with pytest.raises(SublearnError, match="teacher"):
        micro_model.finetune(rows, StudentRecipe(labels="soft"), tmp_path / "x", progress=False)


def test_rows_must_end_with_an_assistant_turn(micro_model, tmp_path: Path):
    with pytest.raises(SublearnError, match="training row 0"):
        micro_model.finetune([{"messages": N}], StudentRecipe(), tmp_path / "x", progress=False)


@pytest.mark.parametrize("group", [False, True])
def test_batches_cover_each_epoch_once(group: bool):
    lengths = [5, 9, 1, 7, 3, 8, 2, 6, 4, 10]
    recipe = StudentRecipe(batch_size=3, group_by_length=group, seed=1)
    batches = _batches(lengths, recipe, needed=4)  # one epoch: 3+3+3+1
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert _batches(lengths, recipe, 4) == batches
