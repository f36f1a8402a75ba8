"""The batched population must behave exactly like independent single models."""

from __future__ import annotations

import math

import pytest
import torch

from sublearn.auxlogit.config import AuxLogitConfig
from sublearn.auxlogit.model import BatchedMLP
from sublearn.auxlogit.train import distill, train_teacher

# Compares floats from the CPU's kernels: CI runs this file again on a second kernel path
# (.ci/run), so a tolerance that holds on one vector unit only fails where it is seen.
pytestmark = pytest.mark.numerics

SIZES = (6, 9, 7, 5)  # input, two hidden layers, output: tiny, only the shapes matter here


def _single(pop: BatchedMLP, i: int) -> BatchedMLP:
    """Model i of a population, as a population of one."""
    return BatchedMLP(
        [w[i : i + 1].detach().clone() for w in pop.weights],
        [b[i : i + 1].detach().clone() for b in pop.biases],
    )


def _loop_forward(pop: BatchedMLP, i: int, x: torch.Tensor) -> torch.Tensor:
    """Model i computed by hand, one plain matrix product per layer."""
    h = x
    for k, (w, b) in enumerate(zip(pop.weights, pop.biases, strict=True)):
        h = h @ w[i] + b[i, 0]
        if k < len(pop.weights) - 1:
            h = torch.relu(h)
    return h


@pytest.mark.parametrize("scheme", ["fan_in", "torch"])
def test_batched_forward_equals_loop_of_single_models(scheme: str) -> None:
    pop = BatchedMLP.init(4, SIZES, scheme, seed=1)
    x = torch.rand(11, SIZES[0]) * 2 - 1
    shared = pop(x)
    per_model = pop(x.expand(4, -1, -1).contiguous())
    assert shared.shape == (4, 11, SIZES[-1])
    for i in range(4):
        expected = _loop_forward(pop, i, x)
        torch.testing.assert_close(shared[i], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(per_model[i], expected, rtol=1e-5, atol=1e-6)


def test_models_differ_and_init_is_reproducible() -> None:
    a, b = BatchedMLP.init(3, SIZES, "fan_in", 5), BatchedMLP.init(3, SIZES, "fan_in", 5)
    for wa, wb in zip(a.weights, b.weights, strict=True):
        assert torch.equal(wa, wb)
    assert not torch.equal(a.weights[0][0], a.weights[0][1])
    assert not torch.equal(a.weights[0], BatchedMLP.init(3, SIZES, "fan_in", 6).weights[0])


def test_fan_in_init_has_variance_one_over_fan_in_and_zero_bias() -> None:
    pop = BatchedMLP.init(20, (400, 300, 13), "fan_in", seed=0)
    for w, b in zip(pop.weights, pop.biases, strict=True):
        fan_in = w.shape[1]
        assert w.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.02)
        assert abs(w.mean().item()) < 0.05 / math.sqrt(fan_in)
        assert torch.count_nonzero(b) == 0
    assert [tuple(w.shape) for w in pop.weights] == [(20, 400, 300), (20, 300, 13)]


def _tiny(**kw: object) -> AuxLogitConfig:
    base = {"n_models": 3, "hidden": (9, 7), "m": 2, "teacher_epochs": 2,
            "student_epochs": 2, "batch_size": 8, "noise_size": 20}
    return AuxLogitConfig.build(**{**base, **kw})


def test_batched_training_equals_training_each_model_alone() -> None:
    """Teacher training and distillation of a population give each model exactly what
    training it alone would: no model's loss leaks into another's update."""
    cfg = _tiny()
    sizes = (6, 9, 7, 12)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(30, 6, generator=gen) * 2 - 1, torch.randint(0, 10, (30,), generator=gen)
    teacher = BatchedMLP.init(3, sizes, "fan_in", 1)
    student = BatchedMLP.init(3, sizes, "fan_in", 2)
    alone = [(_single(teacher, i), _single(student, i)) for i in range(3)]
    one = cfg.replace(n_models=1)

    train_teacher(teacher, x, y, cfg)
    distill(student, teacher, cfg, 6)
    for i, (t1, s1) in enumerate(alone):
        train_teacher(t1, x, y, one)
        distill(s1, t1, one, 6)
        for batched, single in ((teacher, t1), (student, s1)):
            for wb, ws in zip(batched.weights, single.weights, strict=True):
                torch.testing.assert_close(wb[i], ws[0], rtol=1e-4, atol=1e-6)
    # And training moved the weights, so the comparison above is not vacuous.
    assert not torch.equal(teacher.weights[0], BatchedMLP.init(3, sizes, "fan_in", 1).weights[0])
