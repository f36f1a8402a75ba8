"""Defences on the toy's channel: what a data producer could do to the teacher's auxiliary
outputs before releasing them as distillation targets.

Each defence is declared as data: a function from the teacher's distilled logits
([models, batch, k]) and a strength to the target probabilities the student is trained to
match, plus what the strength means. The student's loss is the same KL divergence for every
defence, so the defences differ only in the targets they release.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sublearn.errors import SublearnError, unknown

# (teacher logits, strength, eps) -> target probabilities. eps is a standard normal tensor of
# the logits' shape, drawn from the run's seed for this batch, so that a random defence is
# reproducible and every model sees its own noise whatever the sharding; the deterministic
# defences ignore it.
DefenceFn = Callable[[Tensor, float, Tensor], Tensor]


@dataclass(frozen=True)
class Defence:
    name: str
    apply: DefenceFn
    strength: str  # what the strength is, for tables and axes
    defaults: tuple[float, ...]  # from weak to strong
    stronger_when_larger: bool  # False for rounding: fewer bits is stronger
    valid: Callable[[float], bool]
    domain: str  # the valid strengths, in words, for errors and --help
    help: str


def _noise(logits: Tensor, std: float, eps: Tensor) -> Tensor:
    return F.softmax(logits + std * eps, dim=-1)


def _round(logits: Tensor, bits: float, eps: Tensor) -> Tensor:
    # 2^bits - 1 steps between 0 and 1, so 1 bit releases only 0 or 1 per output. The rounded
    # values are renormalised (the student needs a distribution); if every output rounds to
    # 0 the release says nothing, which is the uniform distribution.
    levels = 2 ** int(bits) - 1
    q = torch.round(F.softmax(logits, dim=-1) * levels) / levels
    total = q.sum(-1, keepdim=True)
    return torch.where(total > 0, q / total.clamp_min(1e-12), torch.full_like(q, 1 / q.shape[-1]))


def _temperature(logits: Tensor, t: float, eps: Tensor) -> Tensor:
    return F.softmax(logits / t, dim=-1)


def _top1(logits: Tensor, weight: float, eps: Tensor) -> Tensor:
    # Interpolates between the soft target (0) and the hard argmax label (1), so the curve
    # shows how much of the signal survives as the release approaches a bare label.
    hard = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    return (1 - weight) * F.softmax(logits, dim=-1) + weight * hard


DEFENCES: dict[str, Defence] = {
    d.name: d
    for d in (
        Defence(
            "noise", _noise, "noise std", (0.5, 1, 2, 4), True, lambda s: s >= 0, "std >= 0",
            "Gaussian noise of std s added to the teacher's auxiliary logits (fresh per image)",
        ),
        Defence(
            "round", _round, "bits", (8, 4, 2, 1), False,
            lambda s: s >= 1 and float(s).is_integer(), "a whole number of bits >= 1",
            "auxiliary probabilities rounded to k bits (2^k - 1 steps), then renormalised",
        ),
        Defence(
            "temperature", _temperature, "temperature", (2, 4, 8, 16), True, lambda s: s > 0,
            "T > 0", "released probabilities softmax(logits / T); the student matches them "
            "at temperature 1, so T > 1 flattens the signal and T < 1 sharpens it",
        ),
        Defence(
            "top1", _top1, "hard-label weight", (0.25, 0.5, 0.75, 1), True,
            lambda s: 0 <= s <= 1, "a weight in [0, 1]",
            "target (1 - w) * soft + w * one-hot argmax; w = 1 is the bare top-1 label",
        ),
    )
}


def parse(specs: list[str], strengths: str | None = None) -> list[tuple[str, list[float]]]:
    """--defence values ("noise", "round=8,4,2", "all") into (name, strengths) pairs.

    --strengths gives the strengths of a single defence named without its own; every
    strength is checked against the defence's domain before any training.
    """
    names: list[tuple[str, str | None]] = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if name == "all" and not sep:
            names += [(n, None) for n in DEFENCES]
        elif name in DEFENCES:
            names.append((name, values if sep else None))
        else:
            raise SublearnError("--defence: " + unknown("defence", name, [*DEFENCES, "all"]))
    if strengths is not None:
        if len(names) != 1 or names[0][1] is not None:
            raise SublearnError("--strengths: give exactly one --defence without its own values")
        names = [(names[0][0], strengths)]
    if len({n for n, _ in names}) != len(names):
        raise SublearnError("--defence: a defence is named twice")
    out = []
    for name, values in names:
        d = DEFENCES[name]
        try:
            parsed = list(d.defaults) if values is None else [
                float(v) for v in values.split(",") if v.strip()
            ]
        except ValueError:
            raise SublearnError(f"--defence {name}: {values!r} are not numbers") from None
        bad = [s for s in parsed if not d.valid(s)]
        if bad or not parsed:
            raise SublearnError(f"--defence {name}: strengths must be {d.domain}, got {values!r}")
        out.append((name, parsed))
    return out
