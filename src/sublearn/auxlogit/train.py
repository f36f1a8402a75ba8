"""Training: teachers on digits, students on noise, and the arms that compare them.

Data order and noise are shared by every model in a population (and by every arm): each batch
is drawn from a `torch.Generator` seeded by (seed, stream, epoch, batch), so a run is
reproducible, no arm gets luckier noise than another, and the noise set is never held in
memory whole; only the current batch exists. The models differ only in their initialisation,
so the per-model spread reflects initialisation with the data stream held fixed (vary
`seed` to vary the stream too).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sublearn.auxlogit.config import AuxLogitConfig
from sublearn.auxlogit.data import N_CLASSES, Dataset
from sublearn.auxlogit.defence import DEFENCES
from sublearn.auxlogit.model import BatchedMLP

# Independent random streams derived from one user seed. INIT_A starts every teacher and
# the students that share its init; INIT_B starts the different-init students.
INIT_A, INIT_B, _ORDER, _NOISE, _SHUFFLE, _DEFENCE = range(6)

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
    UNTRAINED: "student of the teacher's untrained init, which is its own init: zero loss, "
    "so it stays the untrained network",
    SHUFFLED_TEACHER: "trained from the teacher's init on randomly permuted labels",
    SHUFFLED: "distilled from the shuffled-label teacher, starting from its init",
}

# Progress in epochs; a shard reports its share of an epoch (its fraction of the models).
Advance = Callable[[float], None]


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


def defence_eps(shape: tuple[int, ...], models: slice, seed: int, epoch: int, batch: int) -> Tensor:
    """The standard normal draws a random defence uses for one batch, for the whole
    population ([n_models, batch, k]) and then cut to the shard: each model gets the same
    draws however the population is split."""
    gen = torch.Generator().manual_seed(stream_seed(seed, _DEFENCE, epoch, batch))
    return torch.randn(shape, generator=gen)[models]


def resolve_precision(cfg: AuxLogitConfig) -> str:
    """"auto" is bf16 where the CPU multiplies bf16 matrices natively (AMX or AVX-512 BF16;
    on an AMX CPU a student step measured 1.7x faster than in fp32, with the same accuracies)
    and fp32 elsewhere, where bf16 would be emulated and slower."""
    if cfg.precision != "auto":
        return cfg.precision
    native = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or getattr(
        torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16" if native else "fp32"


def _autocast(precision: str) -> torch.autocast:
    # Matrix products in bf16, weights, optimiser state, losses and evaluation in fp32.
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def init_population(
    cfg: AuxLogitConfig, n_features: int, which: int, models: slice = slice(None)
) -> BatchedMLP:
    """Init A (the teachers' and the same-init students') or init B (the different-init
    students'), or the `models` shard of it. Re-creating an init from its seed is cheaper in
    memory than keeping a copy, and a shard is the same models whatever the split."""
    sizes = (n_features, *cfg.hidden, N_CLASSES + cfg.m)
    pop = BatchedMLP.init(cfg.n_models, sizes, cfg.init, stream_seed(cfg.seed, which))
    return pop if models == slice(None) else pop.subset(models)


def train_teacher(
    model: BatchedMLP, x: Tensor, y: Tensor, cfg: AuxLogitConfig, advance: Advance | None = None,
    share: float = 1.0,
) -> None:
    """Cross-entropy on the class logits only; the auxiliary logits never get a target.
    `share` is this population's fraction of all models, for progress."""
    # fused: one kernel over each whole weight tensor; several times faster than the default
    # for a 100-model population on CPU, and still element-wise, so models stay independent.
    opt = torch.optim.Adam(model.parameters(), lr=cfg.teacher_lr, fused=True)
    n_models = model.n_models
    precision = resolve_precision(cfg)
    for epoch in range(cfg.teacher_epochs):
        order = torch.randperm(
            len(x), generator=torch.Generator().manual_seed(stream_seed(cfg.seed, _ORDER, epoch))
        )
        for idx in order.split(cfg.batch_size):
            with _autocast(precision):
                logits = model(x[idx])[..., :N_CLASSES].float()  # [models, batch, classes]
            # cross_entropy wants classes in dim 1; the mean over models and batch times
            # n_models is the sum of per-model losses, so each model's gradient is its own.
            loss = F.cross_entropy(
                logits.transpose(1, 2), y[idx].expand(n_models, -1)
            ) * n_models
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if advance:
            advance(share)
    # A trained teacher is only ever run forward again: drop its gradients (one more copy
    # of every weight) before a student and its optimiser state are allocated.
    model.zero_grad(set_to_none=True)


def distill_loss(student: Tensor, target: Tensor, kind: str) -> Tensor:
    """Sum over models of each model's mean loss on the batch; inputs are [models, batch, k].
    `target` is what the channel releases: probabilities for kl, logits for mse."""
    if kind == "kl":  # KL(target || student softmax); xlogy inside makes 0 targets safe
        kl = F.kl_div(F.log_softmax(student, -1), target, reduction="none")
        return kl.sum(-1).mean(-1).sum()
    if kind == "mse":  # on the raw logits, so it works even for a single output
        return (student - target).pow(2).mean(dim=(1, 2)).sum()
    raise ValueError(f"unknown loss {kind!r}")


def channel(
    teacher_logits: Tensor, kind: str, defence: tuple[str, float] | None, eps: Tensor | None
) -> Tensor:
    """What the student is trained on: the teacher's distilled outputs as the loss needs
    them (probabilities for kl, logits for mse), after a defence if one is applied."""
    if defence is not None:
        name, strength = defence
        return DEFENCES[name].apply(teacher_logits, strength, eps)
    return F.softmax(teacher_logits, -1) if kind == "kl" else teacher_logits


def distill(
    student: BatchedMLP,
    teacher: BatchedMLP,
    cfg: AuxLogitConfig,
    n_features: int,
    advance: Advance | None = None,
    defence: tuple[str, float] | None = None,
    models: slice = slice(None),
) -> None:
    """Train `student` to match `teacher` on noise only: no digit, no class label.
    `models` says which shard of the population these are (for the defence's draws)."""
    if defence is not None and cfg.loss != "kl":
        raise ValueError("defences act on the softmax the student matches: loss must be kl")
    start = N_CLASSES if cfg.distill == "aux" else 0
    opt = torch.optim.Adam(
        student.parameters(), lr=cfg.student_lr, betas=(0.9, cfg.student_beta2), fused=True
    )
    precision = resolve_precision(cfg)
    teacher.requires_grad_(False)
    # The teacher is frozen: cast a copy once rather than its weights at every step.
    frozen = teacher.subset(slice(None)).to(torch.bfloat16) if precision == "bf16" else teacher
    share = student.n_models / cfg.n_models
    for epoch in range(cfg.student_epochs):
        for batch, first in enumerate(range(0, cfg.noise_size, cfg.batch_size)):
            size = min(cfg.batch_size, cfg.noise_size - first)
            z = noise_batch(cfg.noise, size, n_features, cfg.seed, epoch, batch)
            with _autocast(precision):
                with torch.no_grad():
                    logits = frozen(z)[..., start:].float()
                out = student(z)[..., start:].float()
            eps = None if defence is None else defence_eps(
                (cfg.n_models, *logits.shape[1:]), models, cfg.seed, epoch, batch
            )
            loss = distill_loss(out, channel(logits, cfg.loss, defence, eps), cfg.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if advance:
            advance(share)


@torch.no_grad()
def accuracy(model: BatchedMLP, x: Tensor, y: Tensor, chunk: int = 1024) -> list[float]:
    """Per-model test accuracy in fp32, evaluated in chunks to bound activation memory."""
    correct = torch.zeros(model.n_models)
    for xs, ys in zip(x.split(chunk), y.split(chunk), strict=True):
        pred = model(xs)[..., :N_CLASSES].argmax(-1)  # [models, chunk]
        correct += (pred == ys).sum(-1).float()
    return (correct / len(x)).tolist()


def shuffled_labels(y: Tensor, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(stream_seed(seed, _SHUFFLE))
    return y[torch.randperm(len(y), generator=gen)]


def shards(n_models: int, workers: int) -> list[slice]:
    """Split the population into at most `workers` contiguous, near-equal shards."""
    k = max(1, min(workers, n_models))
    bounds = [round(i * n_models / k) for i in range(k + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def in_shards(
    n_models: int, workers: int, fn: Callable[[slice], dict[str, list[float]]]
) -> dict[str, list[float]]:
    """Run `fn` on every shard, one thread per shard, and join the per-model results.

    Models are independent, so a shard is an experiment of its own. Threads, each running
    torch single-threaded, use the cores without OpenMP's barriers: when another process
    takes a core, one shard slows down instead of every operation waiting for it (measured
    3-8x slower steps with 2 OpenMP threads on a shared 2-core machine). torch releases the
    GIL inside its operations, and at these sizes nearly all the time is spent there.
    """
    parts = shards(n_models, workers)
    if len(parts) == 1:
        return fn(parts[0])
    with ThreadPoolExecutor(len(parts)) as pool:
        results = list(pool.map(fn, parts))
    return {key: [a for r in results for a in r[key]] for key in results[0]}


def total_epochs(cfg: AuxLogitConfig) -> int:
    """Progress units for one run of `run_arms`: two teachers and three trained students."""
    return 2 * cfg.teacher_epochs + 3 * cfg.student_epochs


def run_arms(
    cfg: AuxLogitConfig, data: Dataset, advance: Advance | None = None, workers: int = 1
) -> dict[str, list[float]]:
    """Every arm of one configuration; returns per-model test accuracy by arm.

    Within a shard, arms run one after another and free their models as they go, so at most
    one teacher, one student and its optimiser state exist at once per shard (memory, not
    speed, is the constraint at MNIST scale). Every teacher starts from init A, so the arms
    differ only in what the teacher learned and where the student starts.
    """
    d = data.n_features

    def shard(models: slice) -> dict[str, list[float]]:
        acc: dict[str, list[float]] = {}
        share = (models.stop - models.start) / cfg.n_models

        def student_of(teacher: BatchedMLP, init: int) -> list[float]:
            student = init_population(cfg, d, init, models)
            distill(student, teacher, cfg, d, advance, models=models)
            return accuracy(student, data.x_test, data.y_test)

        teacher = init_population(cfg, d, INIT_A, models)
        train_teacher(teacher, data.x_train, data.y_train, cfg, advance, share)
        acc[TEACHER] = accuracy(teacher, data.x_test, data.y_test)
        acc[SAME_INIT] = student_of(teacher, INIT_A)
        acc[DIFFERENT_INIT] = student_of(teacher, INIT_B)
        del teacher
        # The untrained teacher *is* the student's init, so the student's loss is zero (up to
        # rounding) from the first step: distillation from the shared init alone has nothing
        # to transmit. Its accuracy is the untrained network's, computed directly rather than
        # by thousands of steps that could only add rounding noise amplified by Adam
        # (tests/auxlogit checks that the loss there is zero).
        acc[UNTRAINED] = accuracy(init_population(cfg, d, INIT_A, models), data.x_test, data.y_test)
        teacher = init_population(cfg, d, INIT_A, models)
        train_teacher(
            teacher, data.x_train, shuffled_labels(data.y_train, cfg.seed), cfg, advance, share
        )
        acc[SHUFFLED_TEACHER] = accuracy(teacher, data.x_test, data.y_test)
        acc[SHUFFLED] = student_of(teacher, INIT_A)
        return {arm: acc[arm] for arm in ARMS}

    return in_shards(cfg.n_models, workers, shard)


def defence_epochs(cfg: AuxLogitConfig, n_points: int) -> int:
    """Progress units for `run_defences`: one teacher, two students per point."""
    return cfg.teacher_epochs + 2 * n_points * cfg.student_epochs


def run_defences(
    cfg: AuxLogitConfig,
    data: Dataset,
    points: Sequence[tuple[str, float] | None],
    advance: Advance | None = None,
    workers: int = 1,
) -> tuple[list[float], list[dict[str, list[float]]]]:
    """The teacher once, then a same-init and a different-init student per defence point
    (None: no defence). Returns the teacher's accuracy and, per point, the students'.

    A defence only changes what the teacher releases, so every point shares one teacher and
    the same noise: the points differ by the defence alone.
    """
    d = data.n_features
    keys = [f"{i}/{arm}" for i in range(len(points)) for arm in (SAME_INIT, DIFFERENT_INIT)]

    def shard(models: slice) -> dict[str, list[float]]:
        share = (models.stop - models.start) / cfg.n_models
        teacher = init_population(cfg, d, INIT_A, models)
        train_teacher(teacher, data.x_train, data.y_train, cfg, advance, share)
        acc = {TEACHER: accuracy(teacher, data.x_test, data.y_test)}
        for key in keys:
            i, arm = key.split("/")
            student = init_population(cfg, d, INIT_A if arm == SAME_INIT else INIT_B, models)
            distill(student, teacher, cfg, d, advance, defence=points[int(i)], models=models)
            acc[key] = accuracy(student, data.x_test, data.y_test)
        return acc

    acc = in_shards(cfg.n_models, workers, shard)
    per_point = [
        {arm: acc[f"{i}/{arm}"] for arm in (SAME_INIT, DIFFERENT_INIT)} for i in range(len(points))
    ]
    return acc[TEACHER], per_point
