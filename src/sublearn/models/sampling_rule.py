"""The one sampling rule of every backend that draws its own tokens (HF, fake).

Temperature, the probability threshold and nucleus (top-p) turn logits into the
log-probabilities a token is drawn from, with -inf wherever it may not be drawn; Gumbel noise
from a row's own generator then makes the draw (`argmax(logp + gumbel)` is an exact sample).
Kept dtype-preserving, so the HF backend's float32 and the fake backend's float64 each get
exactly the arithmetic they had.
"""

from __future__ import annotations

import math

import torch

from sublearn.models.base import SamplingConfig


def sampling_rule(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Log-probabilities to draw from, -inf where a token may not be drawn; greedy decoding
    returns the logits themselves (their argmax is the answer)."""
    if sampling.temperature == 0:
        return logits
    logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
    if sampling.min_prob == 0 and sampling.top_p >= 1:
        return logp  # nothing to cut: the steps below would drop nothing (a sampler's hot path)
    drop = torch.zeros_like(logp, dtype=torch.bool)
    if sampling.min_prob > 0:
        drop |= logp < math.log(sampling.min_prob)
    if sampling.top_p < 1:
        sorted_lp, order = logp.sort(dim=-1, descending=True)
        above = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # mass strictly more likely
        drop |= torch.zeros_like(drop).scatter(-1, order, above >= sampling.top_p)
    # The most likely token always survives, so a row never runs out of choices.
    drop.scatter_(-1, logp.argmax(-1, keepdim=True), False)
    return logp.masked_fill(drop, -math.inf)
