"""A population of MLPs trained as one batched computation.

Every weight tensor carries a leading model dimension: layer k of model i is
`weights[k][i]` with shape [fan_in, fan_out]. A forward pass is one `torch.baddbmm` per layer
for the whole population, so 100 models cost one large matrix product rather than 100 small
ones, and Adam (an element-wise optimiser) updates each model exactly as if it were alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

InitScheme = Literal["fan_in", "torch"]


class BatchedMLP(nn.Module):
    """`n_models` independent ReLU MLPs with identical layer sizes; build one with `init`."""

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor]):
        super().__init__()
        if len(weights) != len(biases) or not weights:
            raise ValueError("need one bias per weight matrix and at least one layer")
        self.weights = nn.ParameterList(nn.Parameter(w) for w in weights)
        # Biases are [n_models, 1, fan_out] so they broadcast over the batch dimension.
        self.biases = nn.ParameterList(nn.Parameter(b) for b in biases)

    @property
    def n_models(self) -> int:
        return int(self.weights[0].shape[0])

    @classmethod
    def init(
        cls, n_models: int, sizes: Sequence[int], scheme: InitScheme, seed: int
    ) -> BatchedMLP:
        """A freshly initialised population, reproducible from `seed` alone. `sizes` lists
        every width from input to output, e.g. (784, 256, 256, 13).

        "fan_in": weights N(0, 1/fan_in), biases zero: the paper's scheme.
        "torch": PyTorch's nn.Linear default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights
        and biases (a third of the weight variance), for comparison.
        """
        gen = torch.Generator().manual_seed(seed)
        weights, biases = [], []
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)
            if scheme == "fan_in":
                w = torch.randn(n_models, fan_in, fan_out, generator=gen) * bound
                b = torch.zeros(n_models, 1, fan_out)
            elif scheme == "torch":
                w = (torch.rand(n_models, fan_in, fan_out, generator=gen) * 2 - 1) * bound
                b = (torch.rand(n_models, 1, fan_out, generator=gen) * 2 - 1) * bound
            else:
                raise ValueError(f"unknown init scheme {scheme!r}")
            weights.append(w)
            biases.append(b)
        return cls(weights, biases)

    def subset(self, models: slice) -> BatchedMLP:
        """Some of the models, as their own population (a shard trained in its own thread)."""
        return type(self)(
            [w[models].detach().clone() for w in self.weights],
            [b[models].detach().clone() for b in self.biases],
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: [batch, in] shared by all models, or [n_models, batch, in]. Returns [n_models,
        batch, out].

        A shared batch is expanded as a view (stride 0), not copied once per model, which
        keeps a 100-model population at MNIST scale within a small memory budget. baddbmm
        adds the bias inside the matrix product: one pass over each activation instead of
        two, and under bf16 autocast no separate mixed-precision add.
        """
        h = x
        last = len(self.weights) - 1
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if h.dim() == 2:
                h = h.expand(w.shape[0], -1, -1)
            h = torch.baddbmm(b, h, w)
            if k < last:
                # In place: baddbmm's backward needs its inputs, not its output, so one
                # activation tensor per layer is enough.
                h = h.relu_()
        return h
