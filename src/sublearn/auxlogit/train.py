"""Training: teachers on digits, students on noise, and the arms that compare them.

Data order and noise are shared by every model in a population (and by every arm): each batch
is drawn from a `torch.Generator` seeded by (seed, stream, epoch, batch), so a run is
reproducible, no arm gets luckier noise than another, and the noise set is never held in
memory whole; only the current batch exists. The models differ only in their initialisation,
so the per-model spread reflects initialisation with the data stream held fixed (vary
`seed` to vary the stream too).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sublearn.auxlogit.config import AuxLogitConfig
from sublearn.auxlogit.data import N_CLASSES, Dataset
from sublearn.auxlogit.model import BatchedMLP

# Independent random streams derived from one user seed. INIT_A starts every teacher and
# the students that share its init; INIT_B starts the different-init students.
INIT_A, INIT_B, _ORDER, _NOISE, _SHUFFLE = range(5)

# Arms, in the order they run and are reported.
TEACHER = "teacher"
SAME_INIT = "same_init_student"
DIFFERENT_INIT = "different_init_student"
UNTRAINED = "untrained_teacher_student"
SHUFFLED_TEACHER = "shuffled_label_teacher"
SHUFFLED = "shuffled_teacher_student"
ARMS = (TEACHER, SAME_INIT, DIFFERENT_INIT, UNTRAINED, SHUFFLED_TEACHER, SHUFFLED)
ARM_HELP = {
    TEACHER: "trained on digits (cross-entropy on the 10 class logits)",
    SAME_INIT: "distilled on noise from the teacher, starting from the teacher's init",
    DIFFERENT_INIT: "the same distillation, starting from an independent init",
    UNTRAINED: "distilled from the teacher's untrained init, starting from that init",
    SHUFFLED_TEACHER: "trained from the teacher's init on randomly permuted labels",
    SHUFFLED: "distilled from the shuffled-label teacher, starting from its init",
}

Advance = Callable[[int], None]


def stream_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (no collisions between streams)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def noise_batch(kind: str, size: int, n_features: int, seed: int, epoch: int, batch: int) -> Tensor:
    """Noise images for one distillation batch, regenerated from its seed on demand."""
    gen = torch.Generator().manual_seed(stream_seed(seed, _NOISE, epoch, batch))
    if kind == "uniform":  # the same [-1, 1] range as the centred digits
        return torch.rand(size, n_features, generator=gen) * 2 - 1
    if kind == "gaussian":
        return torch.randn(size, n_features, generator=gen)
    raise ValueError(f"unknown noise {kind!r}")


def init_population(cfg: AuxLogitConfig, n_features: int, which: int) -> BatchedMLP:
    """Init A (the teachers' and the same-init students') or init B (the different-init
    students'). Re-creating an init from its seed is cheaper in memory than keeping a copy."""
    sizes = (n_features, *cfg.hidden, N_CLASSES + cfg.m)
    return BatchedMLP.init(cfg.n_models, sizes, cfg.init, stream_seed(cfg.seed, which))


def train_teacher(
    model: BatchedMLP, x: Tensor, y: Tensor, cfg: AuxLogitConfig, advance: Advance | None = None
) -> None:
    """Cross-entropy on the class logits only; the auxiliary logits never get a target."""
    # fused: one kernel over each whole weight tensor; several times faster than the default
    # for a 100-model population on CPU, and still element-wise, so models stay independent.
    opt = torch.optim.Adam(model.parameters(), lr=cfg.teacher_lr, fused=True)
    n_models = model.n_models
    for epoch in range(cfg.teacher_epochs):
        order = torch.randperm(
            len(x), generator=torch.Generator().manual_seed(stream_seed(cfg.seed, _ORDER, epoch))
        )
        for idx in order.split(cfg.batch_size):
            logits = model(x[idx])[..., :N_CLASSES]  # [models, batch, classes]
            # cross_entropy wants classes in dim 1; the mean over models and batch times
            # n_models is the sum of per-model losses, so each model's gradient is its own.
            loss = F.cross_entropy(
                logits.transpose(1, 2), y[idx].expand(n_models, -1)
            ) * n_models
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if advance:
            advance(1)
    # A trained teacher is only ever run forward again: drop its gradients (one more copy
    # of every weight) before a student and its optimiser state are allocated.
    model.zero_grad(set_to_none=True)


def distill_loss(student: Tensor, teacher: Tensor, kind: str) -> Tensor:
    """Sum over models of each model's mean loss on the batch; inputs are [models, batch, k]."""
    if kind == "kl":  # KL(teacher || student) between softmaxes over the distilled outputs
        kl = F.kl_div(
            F.log_softmax(student, -1), F.log_softmax(teacher, -1),
            log_target=True, reduction="none",
        )
        return kl.sum(-1).mean(-1).sum()
    if kind == "mse":  # on the raw logits, so it works even for a single output
        return (student - teacher).pow(2).mean(dim=(1, 2)).sum()
    raise ValueError(f"unknown loss {kind!r}")


def distill(
    student: BatchedMLP,
    teacher: BatchedMLP,
    cfg: AuxLogitConfig,
    n_features: int,
    advance: Advance | None = None,
) -> None:
    """Train `student` to match `teacher` on noise only: no digit, no class label."""
    start = N_CLASSES if cfg.distill == "aux" else 0
    opt = torch.optim.Adam(student.parameters(), lr=cfg.student_lr, fused=True)
    teacher.requires_grad_(False)
    for epoch in range(cfg.student_epochs):
        for batch, first in enumerate(range(0, cfg.noise_size, cfg.batch_size)):
            size = min(cfg.batch_size, cfg.noise_size - first)
            z = noise_batch(cfg.noise, size, n_features, cfg.seed, epoch, batch)
            with torch.no_grad():
                target = teacher(z)[..., start:]
            loss = distill_loss(student(z)[..., start:], target, cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if advance:
            advance(1)


@torch.no_grad()
def accuracy(model: BatchedMLP, x: Tensor, y: Tensor, chunk: int = 1024) -> list[float]:
    """Per-model test accuracy, evaluated in chunks to bound activation memory."""
    correct = torch.zeros(model.n_models)
    for xs, ys in zip(x.split(chunk), y.split(chunk), strict=True):
        pred = model(xs)[..., :N_CLASSES].argmax(-1)  # [models, chunk]
        correct += (pred == ys).sum(-1).float()
    return (correct / len(x)).tolist()


def shuffled_labels(y: Tensor, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(stream_seed(seed, _SHUFFLE))
    return y[torch.randperm(len(y), generator=gen)]


def total_epochs(cfg: AuxLogitConfig) -> int:
    """Progress units for one run of `run_arms`: two teachers and four students."""
    return 2 * cfg.teacher_epochs + 4 * cfg.student_epochs


def run_arms(
    cfg: AuxLogitConfig, data: Dataset, advance: Advance | None = None
) -> dict[str, list[float]]:
    """Every arm of one configuration; returns per-model test accuracy by arm.

    Arms run one after another and free their models as they go, so at most one teacher,
    one student and its optimiser state exist at once (memory, not speed, is the constraint
    at MNIST scale). Every teacher starts from init A, so the arms differ only in what the
    teacher learned and where the student starts.
    """
    d = data.n_features
    acc: dict[str, list[float]] = {}

    def student_of(teacher: BatchedMLP, init: int) -> list[float]:
        student = init_population(cfg, d, init)
        distill(student, teacher, cfg, d, advance)
        return accuracy(student, data.x_test, data.y_test)

    teacher = init_population(cfg, d, INIT_A)
    train_teacher(teacher, data.x_train, data.y_train, cfg, advance)
    acc[TEACHER] = accuracy(teacher, data.x_test, data.y_test)
    acc[SAME_INIT] = student_of(teacher, INIT_A)
    acc[DIFFERENT_INIT] = student_of(teacher, INIT_B)
    del teacher
    # The untrained teacher and its student are the same function at the start, so the
    # student's loss and gradient are exactly zero: this arm shows that distillation from the
    # shared init, without any teacher training, adds nothing.
    acc[UNTRAINED] = student_of(init_population(cfg, d, INIT_A), INIT_A)
    teacher = init_population(cfg, d, INIT_A)
    train_teacher(teacher, data.x_train, shuffled_labels(data.y_train, cfg.seed), cfg, advance)
    acc[SHUFFLED_TEACHER] = accuracy(teacher, data.x_test, data.y_test)
    acc[SHUFFLED] = student_of(teacher, INIT_A)
    return acc
