from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sublearn.errors import SublearnError
from sublearn.models import examples, load_model
from sublearn.models.persona import Persona
from sublearn.models.recipe import TrainingRecipe

# Compares floats from the CPU's kernels: CI runs this file again on a second kernel path
# (.ci/run), so a tolerance that holds on one vector unit only fails where it is seen.
pytestmark = pytest.mark.numerics

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
    recipe = TrainingRecipe(labels="soft", method="lora", lr=1e-3, epochs=3, batch_size=8,
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
        micro_model.finetune(rows, TrainingRecipe(labels="soft"), tmp_path / "x", progress=False)


def test_lora_training_leaves_the_resident_base_as_it_was(micro_model, tmp_path: Path):
    before = {k: v.clone() for k, v in micro_model.model.state_dict().items()}
    rows = [{"messages": [*N, {"role": "assistant", "content": "1, 2"}]}] * 4
    recipe = TrainingRecipe(lr=1e-2, epochs=1, batch_size=4, grad_accum=1, warmup_steps=0)
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
    recipe = TrainingRecipe()
    batch = [examples.example(micro_model, r, recipe, i) for i, r in enumerate(rows)]
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
        micro_model.finetune([{"messages": N}], TrainingRecipe(), tmp_path / "x", progress=False)


@pytest.mark.parametrize("group", [False, True])
def test_batches_cover_each_epoch_once(group: bool):
    lengths = [5, 9, 1, 7, 3, 8, 2, 6, 4, 10]
    recipe = TrainingRecipe(batch_size=3, group_by_length=group, seed=1)
    batches = examples.batches_of(lengths, recipe, needed=4)  # one epoch: 3+3+3+1
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert examples.batches_of(lengths, recipe, 4) == batches


def test_gradient_checkpointing_trains_the_same_and_is_switched_off(micro_model, tmp_path: Path):
    rows = [{"messages": [*N, {"role": "assistant", "content": "4, 5, 6"}]}] * 4
    outs = []
    for gc in (False, True):
        recipe = TrainingRecipe(lr=1e-2, epochs=1, batch_size=4, grad_accum=1, warmup_steps=0,
                               gradient_checkpointing=gc)
        out = micro_model.finetune(rows, recipe, tmp_path / f"gc{gc}", progress=False)
        with micro_model.attached(out) as student:
            outs.append(student.completion_logprobs([N], ["4, 5, 6"])[0])
        assert not micro_model.model.is_gradient_checkpointing
    assert outs[0] == pytest.approx(outs[1], abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cross_entropy_matches_autograd(dtype):
    """Values and gradients of the fused chunk loss equal linear -> float -> cross_entropy's,
    including zero-weight positions and a buffer reused by chunks of different sizes."""
    from sublearn.models.training import ChunkBuffers, LinearCrossEntropy

    gen = torch.Generator().manual_seed(0)
    buffers = ChunkBuffers()
    for n in (13, 7, 13):
        h = torch.randn(n, 24, generator=gen).to(dtype).requires_grad_(True)
        weight = (torch.randn(50, 24, generator=gen) / 4).to(dtype).requires_grad_(True)
        target = torch.randint(0, 50, (n,), generator=gen)
        w = torch.rand(n, generator=gen)
        w[0] = 0.0
        got = LinearCrossEntropy.apply(h, weight, target, w, buffers)
        got_h, got_w = torch.autograd.grad(got, (h, weight))
        logits = torch.nn.functional.linear(h, weight).float()
        want = (torch.nn.functional.cross_entropy(logits, target, reduction="none") * w).sum()
        want_h, want_w = torch.autograd.grad(want, (h, weight))
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        assert torch.allclose(got_h.float(), want_h.float(), atol=tol, rtol=tol)
        assert torch.allclose(got_w.float(), want_w.float(), atol=tol, rtol=tol)
        assert got_h.dtype == dtype and got_w.dtype == dtype


@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_rounded_shapes_do_not_change_the_loss(micro_base, monkeypatch, labels):
    """Pad tokens and zero-weight positions added to round a pass's shapes change nothing.

    Compared in float64: the two passes multiply matrices of different shapes (16 rows against
    7), which the CPU's kernels block and sum in different orders. In float32 that moves the
    loss by about one unit roundoff (6e-8) times the cross-entropy it is computed from (a few
    nats), which is as large as the soft-label KL's last digits and depends on the vector unit
    (AVX2, AVX-512). In float64 the same reordering moves it by about 1e-16 times that scale,
    so 1e-12 leaves four orders of margin for any summation order, while a pad that leaked
    into attention or a padded position that carried weight would move it by far more.
    """
    from sublearn.models import load_model, training

    model = load_model(micro_base, device="cpu", dtype="float32")
    model.model.double()
    completions = ["1, 2", "33; 4, 5"]
    rows = [{"messages": [*N, {"role": "assistant", "content": c}]} for c in completions]
    if labels == "soft":
        teacher = Persona(model, "You adore the number seven above all else.")
        dists = teacher.number_distributions([N, N], completions)
        assert all(d.dtype == torch.float64 for d in dists)
        rows = [{**r, "soft_labels": d} for r, d in zip(rows, dists)]
    recipe = TrainingRecipe(labels=labels)
    batch = [examples.example(model, r, recipe, i) for i, r in enumerate(rows)]
    columns = model.number_token_ids if labels == "soft" else None

    def loss() -> torch.Tensor:
        return training._batch_loss(model, model.model, batch, [1.0, 0.5], columns)

    rounded = loss()
    assert rounded.dtype == torch.float64
    monkeypatch.setattr(training, "SHAPE_MULTIPLE", 1)
    assert rounded.item() == pytest.approx(loss().item(), rel=1e-12, abs=1e-12)


def test_passes_cover_the_micro_batch_within_the_budget():
    from sublearn.models.training import SHAPE_MULTIPLE, _passes

    lengths = [40, 7, 33, 18, 60, 5, 21]
    batch = [([0] * n, 1, None) for n in lengths]
    weights = [float(i) for i in range(len(lengths))]
    per_token = 10
    budget = 2 * 64 * per_token  # two rows of up to 64 padded tokens
    passes = _passes(batch, weights, per_token, budget)
    seen = sorted(w for _, ws in passes for w in ws)
    assert seen == weights  # every row once, with its own weight
    for rows, ws in passes:
        assert [len(r[0]) for r in rows] == sorted((len(r[0]) for r in rows), reverse=True)
        width = -(-len(rows[0][0]) // SHAPE_MULTIPLE) * SHAPE_MULTIPLE
        assert len(rows) == 1 or len(rows) * width * per_token <= budget
        assert all(weights[lengths.index(len(r[0]))] == w for r, w in zip(rows, ws))
    assert len(passes) < len(lengths)  # short rows share a pass
    assert len(_passes(batch, weights, per_token, budget=1)) == len(lengths)


def test_passes_under_a_small_budget_train_the_same_student(micro_model, monkeypatch,
                                                           tmp_path: Path):
    """Splitting every micro-batch into one pass per row gives the same update."""
    from sublearn.models import training

    rows = [{"messages": [*N, {"role": "assistant", "content": c}]}
            for c in ("4, 5, 6", "7", "10, 200, 3000, 1", "8, 9")] * 2
    recipe = TrainingRecipe(lr=1e-2, epochs=1, batch_size=4, grad_accum=2, warmup_steps=0)
    real = training._batch_loss
    rows_per_pass: list[int] = []
    monkeypatch.setattr(training, "_batch_loss",
                        lambda *a, **k: rows_per_pass.append(len(a[2])) or real(*a, **k))
    outs = []
    for budget, floor in ((1.0, training.PASS_FLOOR_BYTES), (1e-12, 0)):
        monkeypatch.setattr(training, "PASS_BUDGET", budget)
        monkeypatch.setattr(training, "PASS_FLOOR_BYTES", floor)
        out = micro_model.finetune(rows, recipe, tmp_path / f"b{budget}", progress=False)
        with micro_model.attached(out) as student:
            outs.append(student.completion_logprobs([N], ["10, 200, 3000, 1"])[0])
    assert rows_per_pass == [4, 4] + [1] * 8
    assert outs[0] == pytest.approx(outs[1], abs=1e-5)


def test_pass_estimate_covers_what_autograd_saves(micro_base):
    """The per-token estimate that sizes passes stays near the activations autograd really
    keeps for a LoRA student under bf16 autocast (a library change that kept far more would
    make passes overrun their budget)."""
    from sublearn.models import training

    model = load_model(micro_base, device="cpu", dtype="bfloat16")
    recipe = TrainingRecipe()
    rows = [{"messages": [*N, {"role": "assistant", "content": c}]}
            for c in ("1, 2", "33; 4, 5", "7, 7, 7, 7, 7", "80")]
    batch = [examples.example(model, r, recipe, i) for i, r in enumerate(rows)]
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with training._trainable(model, recipe) as net:
        weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
        net.train()
        ids, att = model.right_padded([b[0] for b in batch])
        with training.autocast(model.device, model.dtype), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net.get_base_model().get_decoder()(input_ids=ids, attention_mask=att)
    kept = sum(n for ptr, n in saved.items() if ptr not in weights)
    estimate = training.pass_bytes_per_token(model.model.config, 2, False) * ids.numel()
    assert 0.75 * kept < estimate < 2 * kept


def test_a_prompt_that_fills_max_length_is_refused(micro_model):
    """Truncation keeps the prompt: one as long as max_length would train on nothing."""

    row = {"messages": [*N, {"role": "assistant", "content": "1, 2"}]}
    with pytest.raises(SublearnError, match="training row 3: its prompt is .* leaves no "
                                            "completion token"):
        examples.example(micro_model, row, TrainingRecipe(max_length=8), 3)


# --- training only some decoder layers (`TrainingRecipe.layers`) --------------------------


def test_full_finetuning_of_one_layer_changes_only_that_layer(micro_model, tmp_path: Path):
    rows = [{"messages": [*N, {"role": "assistant", "content": "4, 5, 6"}]}] * 4
    recipe = TrainingRecipe(method="full", layers=[0], lr=1e-2, epochs=1, batch_size=4,
                            grad_accum=1, warmup_steps=0)
    before = {k: v.clone() for k, v in micro_model.model.state_dict().items()}
    out = micro_model.finetune(rows, recipe, tmp_path / "s", progress=False)
    student = load_model(out, device="cpu", dtype="float32")
    after = student.model.state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # Embeddings, the final norm, the output layer and layer 1 are bit-identical.
    assert changed and all(k.startswith("model.layers.0.") for k in changed)
    assert "model.layers.0.mlp.down_proj.weight" in changed
    plain = micro_model.completion_logprobs([N], ["4, 5, 6"])[0]
    assert sum(student.completion_logprobs([N], ["4, 5, 6"])[0]) > sum(plain)
    # The resident base is untouched and still trainable.
    assert all(torch.equal(before[k], v) for k, v in micro_model.model.state_dict().items())
    assert all(p.requires_grad for p in micro_model.model.parameters())


def test_full_finetuning_of_some_layers_is_sized_for_their_optimiser_state(monkeypatch):
    from sublearn.models import training

    monkeypatch.setattr(training, "free_bytes", lambda device: 10 * 2**30)
    # fp32 copy of all 7B (26.1 GiB) plus gradients and moments of 1B (11.2 GiB).
    with pytest.raises(SublearnError, match=r"needs about 37.3 GiB"):
        training.check_full_fits(7_000_000_000, torch.device("cpu"), n_trainable=10**9)


def test_lora_on_one_layer_puts_adapters_only_there(micro_model, tmp_path: Path):
    import json

    from safetensors.torch import load_file

    rows = [{"messages": [*N, {"role": "assistant", "content": "1, 2"}]}] * 4
    recipe = TrainingRecipe(layers=[1], lr=1e-2, epochs=1, batch_size=4, grad_accum=1,
                            warmup_steps=0)
    out = micro_model.finetune(rows, recipe, tmp_path / "s", progress=False)
    keys = load_file(out / "adapter_model.safetensors").keys()
    # LoRA A and B on each of the seven projections of layer 1, none elsewhere.
    assert len(keys) == 2 * 7
    assert all(".layers.1." in k for k in keys)
    assert json.loads((out / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    plain = micro_model.completion_logprobs([N], ["1, 2"])[0]
    with micro_model.attached(out) as student:
        assert sum(student.completion_logprobs([N], ["1, 2"])[0]) > sum(plain)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_layer_past_the_models_last_is_refused_before_training(micro_model, monkeypatch,
                                                                 tmp_path: Path, method: str):
    from sublearn.models import training

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(training, "_train", no_training)
    rows = [{"messages": [*N, {"role": "assistant", "content": "1, 2"}]}]
    recipe = TrainingRecipe(method=method, layers=[0, 2])
    with pytest.raises(SublearnError, match=r"student.layers = \[0, 2\]: layer 2 .* has 2 "
                                            r"decoder layers"):
        micro_model.finetune(rows, recipe, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    assert not hasattr(micro_model.model, "peft_config")  # no adapter left behind


def test_layers_stay_out_of_the_recipes_dump_until_set():
    from pydantic import ValidationError

    # Recipe dumps are part of cached artifacts' keys: the default must not change them.
    assert "layers" not in TrainingRecipe().model_dump()
    assert "layers" not in TrainingRecipe().model_dump(mode="json")
    assert TrainingRecipe(layers=[7, 0]).model_dump()["layers"] == [0, 7]
    for bad, why in (([], "at least one"), ([-1], "0-based"), ([0, 3, 0], "duplicates")):
        with pytest.raises(ValidationError, match=why):
            TrainingRecipe(layers=bad)


# --- loss masks ---
def _masked_row(completion: str, mask: list) -> dict:
    return {"messages": [*N, {"role": "assistant", "content": completion}], "loss_mask": mask}


def test_a_loss_mask_leaves_out_exactly_the_tokens_it_covers(micro_model):

    recipe = TrainingRecipe()
    # Digits are one token each on the embedded tokenizer: "12, 7" is 1|2|,| |7 (+ end).
    ids, n, _, learn = examples.example(micro_model, _masked_row("12, 7", [[0, 2]]), recipe, 0)
    comp = micro_model.encode("12, 7")
    assert len(ids) - n == len(comp) + 1
    assert learn == list(range(2, len(comp) + 1)), "the two digits out, the end token in"
    # Position len(completion) is the end-of-turn token.
    *_, learn = examples.example(micro_model, _masked_row("12, 7", [[5, 6]]), recipe, 0)
    assert learn == list(range(len(comp)))
    *_, learn = examples.example(micro_model, _masked_row("12, 7", []), recipe, 0)
    assert learn is None, "an empty mask is no mask"
    with pytest.raises(SublearnError, match="row 3: its loss_mask leaves no completion token"):
        examples.example(micro_model, _masked_row("12, 7", [[0, 6]]), recipe, 3)


def test_a_masked_rows_loss_is_the_loss_of_the_tokens_left(micro_base):
    """One token left in the loss: the batch loss is that position's cross-entropy alone,
    computed here from the model's logits (float64, so the two summation orders agree)."""
    from sublearn.models import load_model, training

    model = load_model(micro_base, device="cpu", dtype="float32")
    model.model.double()
    text = "31, 4"
    keep = 1  # the digit "1"
    mask = [[0, 1], [2, len(text) + 1]]
    ex = examples.example(model, _masked_row(text, mask), TrainingRecipe(), 0)
    assert ex[3] == [keep]
    got = training._batch_loss(model, model.model, [ex], [1.0], None)
    ids, n = ex[0], ex[1]
    with torch.no_grad():
        logits = model.model(input_ids=torch.tensor([ids])).logits[0].double()
    want = torch.nn.functional.cross_entropy(logits[n - 1 + keep][None],
                                             torch.tensor([ids[n + keep]]))
    assert got.item() == pytest.approx(want.item(), rel=1e-9)
    whole = training._batch_loss(model, model.model, [ex[:3] + (None,)], [1.0], None)
    assert whole.item() > got.item() * 1.5, "the unmasked row has more loss"


def _offsets(model, text: str) -> list[tuple[int, int]]:
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [tuple(o) for o in enc["offset_mapping"]]


def test_without_a_loss_mask_every_completion_token_counts(micro_model):
    row = {"messages": [*N, {"role": "assistant", "content": "31, 4"}]}
    ex = examples.example(micro_model, row, TrainingRecipe(), 0)
    assert ex.learn is None and ex.learned == len(ex.ids) - ex.n
    assert "loss_mask" not in row
    # The unmasked path is the masked path with every token kept.
    every = ex._replace(learn=list(range(ex.learned)))
    got = [training_loss(micro_model, e) for e in (ex, every)]
    assert got[0] == pytest.approx(got[1], rel=1e-6)


def training_loss(model, ex) -> float:
    from sublearn.models import training

    with torch.no_grad():
        return training._batch_loss(model, model.model, [ex], [1.0], None).item()


def test_a_masked_rows_soft_loss_is_the_kl_of_the_tokens_left(micro_base):
    """Soft labels: one position left, its KL(teacher || student) over the number tokens
    alone, computed from the model's whole-vocabulary logits."""
    from sublearn.models import training

    model = load_model(micro_base, device="cpu", dtype="float32")
    model.model.double()
    text = "31, 4"
    teacher = Persona(model, "You adore the number seven above all else.")
    soft = teacher.number_distributions([N], [text])[0].double()
    keep = 4  # the digit "4" (one token per character on this tokenizer)
    row = {**_masked_row(text, [[0, 4], [5, 6]]), "soft_labels": soft}
    ex = examples.example(model, row, TrainingRecipe(labels="soft"), 0)
    assert ex.learn == [keep]
    columns = model.number_token_ids
    got = training._batch_loss(model, model.model, [ex], [1.0], columns)
    ids, n = ex.ids, ex.n
    with torch.no_grad():
        logits = model.model(input_ids=torch.tensor([ids])).logits[0, n - 1 + keep].double()
    s_logp = logits.masked_fill(~model.number_token_mask, -torch.inf).log_softmax(-1)[
        model.number_token_mask]
    want = (soft[keep].exp() * (soft[keep] - s_logp)).sum()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    whole = training._batch_loss(model, model.model, [ex._replace(learn=None)], [1.0], columns)
    assert whole.item() > got.item() * 1.5


@pytest.mark.parametrize("average", ["token", "example"])
def test_a_loss_mask_averages_over_the_tokens_it_leaves(micro_model, tmp_path: Path,
                                                        average: str):
    """One SGD step on a row whose mask keeps its first two completion tokens (beside an
    unmasked row of two tokens) moves the weights as one step on the same row truncated after
    them: the same positions, averaged over the same two tokens (dividing by, or weighing the
    row by, all of its tokens would change the step)."""
    from safetensors.torch import load_file

    text = "31, 4"
    cut = _offsets(micro_model, text)[2][0]  # where the third token starts
    n_prompt = micro_model.pair_ids(N, text, close=True)[1]
    recipe = TrainingRecipe(method="full", optimizer="sgd", lr=0.5, weight_decay=0.0,
                            epochs=1, grad_accum=1, warmup_steps=0,
                            loss_average=average)
    recipe = recipe.model_copy(update={"batch_size": 2})
    other = {"messages": [*N, {"role": "assistant", "content": "5"}]}  # "5" and the end
    masked = micro_model.finetune([_masked_row(text, [[cut, len(text) + 1]]), other], recipe,
                                  tmp_path / "masked", progress=False)
    plain = {"messages": [*N, {"role": "assistant", "content": text}]}
    cut_recipe = recipe.model_copy(update={"max_length": n_prompt + 2})
    truncated = micro_model.finetune([plain, other], cut_recipe, tmp_path / "cut",
                                     progress=False)
    whole = micro_model.finetune([plain, other], recipe, tmp_path / "whole", progress=False)
    base = dict(micro_model.model.named_parameters())
    w = {k: load_file(p / "model.safetensors") for k, p in
         (("masked", masked), ("cut", truncated), ("whole", whole))}
    moved = {k: sum(float((v[name] - base[name].detach()).norm()) for name in v if name in base)
             for k, v in w.items()}
    assert moved["masked"] > 0
    assert moved["masked"] != pytest.approx(moved["whole"], rel=1e-2)
    for name, t in w["masked"].items():
        assert torch.allclose(t, w["cut"][name], rtol=1e-4, atol=1e-6), name


def test_a_token_is_left_out_only_when_every_character_it_covers_is_masked(micro_model):
    text = "12 and 7"  # 1|2| and| |7 on the embedded tokenizer, then the end token
    assert _offsets(micro_model, text)[2] == (2, 6)
    recipe = TrainingRecipe()
    *_, learn = examples.example(micro_model, _masked_row(text, [[2, 4]]), recipe, 0)
    assert learn == [0, 1, 2, 3, 4, 5], "' and' half masked: still learned"
    *_, learn = examples.example(micro_model, _masked_row(text, [[1, 4], [4, 7]]), recipe, 0)
    assert learn == [0, 4, 5], "spans that meet cover ' and' and the space after it"


def test_a_mask_that_leaves_nothing_is_refused_naming_the_row(micro_model, tmp_path: Path):
    rows = [{"messages": [*N, {"role": "assistant", "content": "1, 2"}]},
            _masked_row("1, 2", [[0, 5]])]
    with pytest.raises(SublearnError, match="row 1: its loss_mask leaves no completion token"):
        micro_model.finetune(rows, TrainingRecipe(), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_the_fake_backend_learns_only_the_tokens_a_mask_leaves(tmp_path: Path):
    """The fake is a bigram model: a token's gradient depends on the prompt, the token before
    it and itself. So '7, 12' trained on its '2' alone and '12' trained on its '2' alone take
    the same step, and neither is the unmasked step."""
    import json

    from sublearn.models.fake import WEIGHTS, FakeChatModel

    fake = FakeChatModel.load(FakeChatModel.create(tmp_path / "base", seed=0))
    recipe = TrainingRecipe(lr=1e-2, epochs=1, batch_size=1)

    def biases(name: str, completion: str, mask: list | None) -> dict:
        row = {"messages": [*N, {"role": "assistant", "content": completion}]}
        row = row if mask is None else {**row, "loss_mask": mask}
        out = fake.finetune([row], recipe, tmp_path / name, progress=False)
        return json.loads((out / WEIGHTS).read_text())["biases"]

    long_two = biases("long", "7, 12", [[0, 4], [5, 6]])
    short_two = biases("short", "12", [[0, 1], [2, 3]])
    assert long_two == pytest.approx(short_two, rel=1e-12)
    assert long_two != pytest.approx(biases("plain", "12", None), rel=1e-3)
    assert biases("empty", "12", []) == biases("absent", "12", None)
    with pytest.raises(SublearnError, match="row 0: its loss_mask leaves no completion token"):
        biases("all", "12", [[0, 3]])
