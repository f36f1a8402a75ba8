from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sublearn.errors import SublearnError
from sublearn.models import load_model
from sublearn.models.persona import Persona
from sublearn.models.recipe import StudentRecipe
from sublearn.models.training import _batches

N = [{"role": "user", "content": "Continue: 512, 640, 128. Up to 4 more numbers."}]


def _restricted(model, convs, completion):
    """Per-position log-distributions over number tokens, from whole-vocabulary logits (an
    independent path from `number_distributions`, which only computes the number columns)."""
    mask = model.number_token_mask
    ids, n = model.pair_ids(convs, completion, close=True)
    t = torch.tensor([ids])
    with torch.no_grad():
        logits = model.model(input_ids=t).logits[0, n - 1 : len(ids) - 1].float()
    return logits.masked_fill(~mask, -torch.inf).log_softmax(-1)[:, mask]


def test_number_distributions_match_whole_vocabulary_logits(micro_model):
    teacher = Persona(micro_model, "You adore the number seven above all else.")
    got = teacher.number_distributions([N, N], ["7, 77, 707", "1"])
    want = _restricted(micro_model, teacher.wrap(N), "7, 77, 707")
    assert got[0].shape == want.shape and got[1].shape[0] == 2  # "1" and end of turn
    assert torch.allclose(got[0], want, atol=1e-5)


def test_soft_labels_pull_the_student_towards_the_teacher(micro_model, tmp_path: Path):
    teacher = Persona(micro_model, "You adore the number seven above all else.")
    soft = teacher.number_distributions([N], ["7, 77, 707"])[0]
    rows = [{"messages": [*N, {"role": "assistant", "content": "7, 77, 707"}],
             "soft_labels": soft}] * 16
    recipe = StudentRecipe(labels="soft", method="lora", lr=1e-3, epochs=3, batch_size=8,
                           grad_accum=1, warmup_steps=0)
    student = load_model(micro_model.finetune(rows, recipe, tmp_path / "s", progress=False),
                         device="cpu", dtype="float32")

    def kl(model) -> float:
        s_lp = _restricted(model, N, "7, 77, 707")
        return float((soft.exp() * (soft - s_lp)).sum())

    assert kl(student) < 0.7 * kl(micro_model)


def test_soft_labels_need_the_teachers_labels(micro_model, tmp_path: Path):
    rows = [{"messages": [*N, {"role": "assistant", "content": "1"}]}]
    with pytest.raises(SublearnError, match="soft_labels"):
        micro_model.finetune(rows, StudentRecipe(labels="soft"), tmp_path / "x", progress=False)


def test_lora_training_leaves_the_resident_base_as_it_was(micro_model, tmp_path: Path):
    before = {k: v.clone() for k, v in micro_model.model.state_dict().items()}
    rows = [{"messages": [*N, {"role": "assistant", "content": "1, 2"}]}] * 4
    recipe = StudentRecipe(lr=1e-2, epochs=1, batch_size=4, grad_accum=1, warmup_steps=0)
    out = micro_model.finetune(rows, recipe, tmp_path / "s", progress=False)
    after = micro_model.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The adapter attaches to the resident base for evaluation and detaches afterwards.
    plain = micro_model.completion_logprobs([N], ["1, 2"])[0]
    with micro_model.attached(out) as student:
        trained = student.completion_logprobs([N], ["1, 2"])[0]
    assert sum(trained) > sum(plain)
    assert micro_model.completion_logprobs([N], ["1, 2"])[0] == pytest.approx(plain, abs=1e-6)
    assert all(torch.equal(before[k], v) for k, v in micro_model.model.state_dict().items())
    # Nor frozen: PEFT freezes what it wraps, which makes CPU matmuls in bf16 crawl.
    assert all(p.requires_grad for p in micro_model.model.parameters())
    assert not micro_model.model.is_gradient_checkpointing


def test_chunked_loss_equals_the_whole_vocabulary_loss(micro_model, monkeypatch):
    from sublearn.models import training

    rows = [{"messages": [*N, {"role": "assistant", "content": c}]} for c in ("1, 2", "33; 4")]
    recipe = StudentRecipe()
    batch = [training._example(micro_model, r, recipe, i) for i, r in enumerate(rows)]
    whole = training._batch_loss(micro_model, micro_model.model, batch, [1.0, 1.0], None).item()
    monkeypatch.setattr(training, "CHUNK_BYTES", 3 * 4 * micro_model.model.config.vocab_size)
    monkeypatch.setattr(training, "chunk_positions", lambda columns: 3)
    chunked = training._batch_loss(micro_model, micro_model.model, batch, [1.0, 1.0], None).item()
    ref = -sum(sum(lp) for lp in micro_model.completion_logprobs([N, N], ["1, 2", "33; 4"]))
    assert whole == pytest.approx(chunked, rel=1e-5)
    assert whole == pytest.approx(ref, rel=1e-4)


def test_full_finetuning_that_cannot_fit_is_refused(monkeypatch):
    from sublearn.models import training

    monkeypatch.setattr(training, "free_bytes", lambda device: 10 * 2**30)
    with pytest.raises(SublearnError, match=r"7.00B parameters needs about 104.3 GiB"):
        training.check_full_fits(7_000_000_000, torch.device("cpu"))


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


def test_gradient_checkpointing_trains_the_same_and_is_switched_off(micro_model, tmp_path: Path):
    rows = [{"messages": [*N, {"role": "assistant", "content": "4, 5, 6"}]}] * 4
    outs = []
    for gc in (False, True):
        recipe = StudentRecipe(lr=1e-2, epochs=1, batch_size=4, grad_accum=1, warmup_steps=0,
                               gradient_checkpointing=gc)
        out = micro_model.finetune(rows, recipe, tmp_path / f"gc{gc}", progress=False)
        with micro_model.attached(out) as student:
            outs.append(student.completion_logprobs([N], ["4, 5, 6"])[0])
        assert not micro_model.model.is_gradient_checkpointing
    assert outs[0] == pytest.approx(outs[1], abs=1e-5)
