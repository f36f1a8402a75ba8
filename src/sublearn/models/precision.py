"""The dtype that log-probabilities and losses are computed in.

Half-precision logits (bf16, fp16) are widened to float32 before a softmax, as `.float()`
would. A wider model keeps its own dtype: a float64 model scores and trains in float64, which
is what the tests use to compare two computations whose only difference is the summation order
of the CPU's kernels (float32 rounding would show there; float64 rounding sits far below any
real effect).
"""

from __future__ import annotations

import torch


def wide(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision dtypes; float32 and float64 as they are."""
    return torch.promote_types(dtype, torch.float32)
