"""Decoding for the Hugging Face backend: one sampling rule, two engines that apply it.

The rule is Gumbel-max with one random stream per row. The next-token logits are restricted
(`allowed`), scaled by the temperature, cut (`min_prob`, `top_p`), and perturbed with Gumbel
noise drawn from a generator seeded with the row's seed; the token is the argmax.
argmax(log p + Gumbel) is an exact sample from p. Because the noise comes from the row's own
generator, row i's draws depend only on seeds[i]: not on batch size, position or the rows
beside it, and two models sampled with the same seeds share their draws (common random
numbers), so a teacher and its control pick the same token wherever their distributions agree
enough, and the difference between their datasets is the trait, not the dice.

Two engines apply the rule and return the same tokens, selected by name in `ENGINES`:

- `generate_hf`: transformers' `generate`, the rule as a logits processor (the reference).
- `generate_kv`: our own loop over a `DynamicCache`, for small models. `generate` decodes
  every row until the longest one ends (on number prompts about half its rows are finished
  at any step), concatenates the whole cache at every step and calls `torch.rand` once per
  row per step. This loop drops finished rows from the batch, writes the cache in place
  (`BufferLayer`) and draws each row's noise several steps at a time (the same numbers: see
  `BlockNoise`). Each row sees the same computation as in `generate`: the prefill is the same
  call, and the steps keep every row's padding, mask path and enough rows for the same matrix
  kernels (see `rows_to_keep`). Measured on an AVX-512 CPU (MKL), every live row's logits at
  every step equal `generate`'s bit for bit; other hardware may pick kernels differently.

Both take token ids, not text: tokenising and decoding belong to the model class.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from sublearn.models.base import SamplingConfig
from sublearn.models.sampling_rule import sampling_rule

# Steps of noise drawn per row at once by `generate_kv`: one `torch.rand` call per row per
# block instead of per step; a finished row wastes at most block - 1 steps of draws.
NOISE_BLOCK = 8

# Never decode fewer rows than this while the batch had more: see `rows_to_keep`.
MIN_ROWS = 16

# Drop finished rows once they are at least 1/COMPACT_WHEN of the batch: dropping copies the
# cache, so dropping one row at a time costs more than carrying it a few steps.
COMPACT_WHEN = 4


# --- the rule ------------------------------------------------------------------------------
def filtered_logprobs(
    scores: torch.Tensor, sampling: SamplingConfig, allowed: torch.Tensor | None
) -> torch.Tensor:
    """Scores [rows, vocab] before the noise: -inf wherever a token may not be drawn.

    Greedy decoding returns the (restricted) logits themselves: their argmax is the answer.
    """
    scores = scores.float()
    if allowed is not None:
        # The output layer may be narrower than the mask (which also spans the tokenizer).
        scores = scores.masked_fill(~allowed[: scores.shape[-1]], -math.inf)
    return sampling_rule(scores, sampling)


def gumbel(uniform: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniform draws (elementwise, so any batch shape gives the
    same number for the same draw)."""
    return -torch.log(-torch.log(uniform.clamp_min(1e-20)))


def row_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per row: CPU streams are the same on every device the model is on."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


class RowSampler:
    """The rule as a `generate` logits processor: one `torch.rand(vocab)` per row per step,
    for every row of the batch, finished or not."""

    def __init__(
        self, sampling: SamplingConfig, seeds: Sequence[int], allowed: torch.Tensor | None
    ):
        self.sampling = sampling
        self.allowed = allowed
        self.gens = row_generators(seeds)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logp = filtered_logprobs(scores, self.sampling, self.allowed)
        if self.sampling.temperature == 0:
            return logp
        u = torch.stack([torch.rand(logp.shape[-1], generator=g) for g in self.gens])
        return logp + gumbel(u).to(logp.device)


class BlockNoise:
    """Each live row's Gumbel noise, drawn `block` steps at a time, aligned with the batch.

    `torch.rand` on a CPU generator fills its output element by element from the generator's
    stream, so one draw of [block, vocab] holds exactly the numbers of `block` successive draws
    of [vocab]: a row's noise at step t is the one `RowSampler` gives it at step t. Rows that
    finish are dropped with `keep`; their generators are never drawn from again, which changes
    nothing, since their later draws were never used.
    """

    def __init__(self, seeds: Sequence[int], width: int, block: int = NOISE_BLOCK):
        self.gens = row_generators(seeds)
        self.width = width
        self.block = block
        self.noise = torch.empty(0)

    def step(self, t: int) -> torch.Tensor:
        """Noise [live rows, vocab] for step t; steps must be asked for in order 0, 1, 2..."""
        if t % self.block == 0:
            draws = [torch.rand(self.block, self.width, generator=g) for g in self.gens]
            self.noise = gumbel(torch.stack(draws))
        return self.noise[:, t % self.block]

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (positions in the current batch), in this order."""
        self.gens = [self.gens[i] for i in rows]
        self.noise = self.noise[rows]


# --- shared helpers ------------------------------------------------------------------------
def left_padded(
    prompts: Sequence[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [rows, longest prompt], padded on the left as a tokenizer
    with padding_side="left" pads them: every prompt then ends where generation starts."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    att = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, att


def cut_at_end(row: Sequence[int], end_ids: Sequence[int]) -> list[int]:
    """The tokens before the first end token (all of them if none ends the row)."""
    ends = set(end_ids)
    return next((list(row[:k]) for k, t in enumerate(row) if t in ends), list(row))


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


# --- engine: transformers' generate --------------------------------------------------------
@torch.no_grad()
def generate_hf(
    model: Any,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    seeds: Sequence[int],
    end_ids: Sequence[int],
    pad_id: int,
    allowed: torch.Tensor | None,
) -> list[list[int]]:
    """Each prompt's new token ids, cut before the first end id, decoded by `generate`."""
    from transformers import GenerationConfig, LogitsProcessorList

    device = _device(model)
    ids, att = left_padded(prompts, pad_id, device)
    gen_config = GenerationConfig(
        do_sample=False,  # the randomness is ours: Gumbel noise in RowSampler
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=list(end_ids),
        pad_token_id=pad_id,
    )
    mask = allowed.to(device) if allowed is not None else None
    # `generate` fills every setting we leave at its default from the model's own
    # generation_config (Qwen2.5-7B-Instruct's asks for repetition_penalty 1.05): swap in a
    # neutral one for the call, so our sampler is the only thing between logits and tokens.
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved, inner.generation_config = inner.generation_config, GenerationConfig()
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=att,
            generation_config=gen_config,
            logits_processor=LogitsProcessorList([RowSampler(sampling, seeds, mask)]),
        )
    finally:
        inner.generation_config = saved
    return [cut_at_end(row, end_ids) for row in out[:, ids.shape[1] :].tolist()]


# --- engine: our own loop over the KV cache ------------------------------------------------
def _check_kv_supported(model: Any) -> None:
    types = getattr(model.config, "layer_types", None)
    if types is None or set(types) != {"full_attention"}:
        raise ValueError(
            "the kv engine decodes models whose layers all use full causal attention; "
            "use the generate engine"
        )


class BufferLayer(DynamicLayer):
    """A `DynamicLayer` that writes into buffers sized for the whole generation.

    `DynamicLayer` concatenates every step, copying the whole cache each time; here a step
    writes one column. Attention reads a view of the filled part, which gives the same bits
    as the concatenated tensor (the kernels follow strides).
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        rows, heads, _, _ = key_states.shape
        # Only the filled part is ever read.
        self.key_buffer = key_states.new_empty(rows, heads, self.capacity, key_states.shape[-1])
        self.value_buffer = value_states.new_empty(
            rows, heads, self.capacity, value_states.shape[-1]
        )
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer = self.key_buffer[indices]
        self.value_buffer = self.value_buffer[indices]
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]


def buffered_cache(capacity: int) -> DynamicCache:
    """A `DynamicCache` whose layers are `BufferLayer`s of `capacity` positions."""
    cache = DynamicCache()  # layers are created on first use, from layer_class_to_replicate
    cache.layer_class_to_replicate = functools.partial(BufferLayer, capacity)
    return cache


def rows_to_keep(going: list[bool], floor: int) -> list[int]:
    """Batch positions to carry into the next step: every live row, then finished ones as
    passengers until the batch has `floor` rows.

    Matrix kernels take another code path for very few rows (measured with MKL: under 6 rows
    for 128 inputs, under 16 for 384), and that path rounds differently; keeping at least
    `floor` rows keeps a live row's arithmetic, bit for bit, what it is in the full batch.
    """
    live = [i for i, g in enumerate(going) if g]
    done = [i for i, g in enumerate(going) if not g]
    return sorted(live + done[: max(0, floor - len(live))])


def _step_mask(att: torch.Tensor, padded: bool) -> Any:
    """The attention mask for one decoding step of the rows in the batch.

    `generate` keeps every row and asks for the 4D mask whenever its batch has padding (sdpa
    then takes the masked kernel path); without padding it lets sdpa run unmasked. Once we have
    dropped rows, the rows left may have no padding while `generate`'s batch still does, and
    sdpa would take the other path. So when the batch was padded we hand the model the mask
    `generate` builds for these rows: for one query token under full causal attention, a key
    is visible exactly where the 2D mask is 1.
    """
    return {"full_attention": att[:, None, None, :].bool()} if padded else att


@torch.no_grad()
def generate_kv(
    model: Any,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    seeds: Sequence[int],
    end_ids: Sequence[int],
    pad_id: int,
    allowed: torch.Tensor | None,
) -> list[list[int]]:
    """Each prompt's new token ids, cut before the first end id: the tokens `generate_hf`
    gives, from a prefill over the left-padded batch and one cached step per token."""
    _check_kv_supported(model)
    device = _device(model)
    ids, att = left_padded(prompts, pad_id, device)
    # Positions as `generate` derives them: count real tokens, padding at 0.
    pos = (att.cumsum(-1) - 1).masked_fill(att == 0, 0)
    padded = not bool(att.all())
    mask = allowed.to(device) if allowed is not None else None
    ends = set(end_ids)
    floor = min(len(prompts), MIN_ROWS)

    cache = buffered_cache(ids.shape[1] + sampling.max_new_tokens)
    # The prefill is `generate`'s, call for call: the whole batch, its 2D mask, its positions.
    logits = model(
        input_ids=ids, attention_mask=att, position_ids=pos, cache=cache, use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    rows = list(range(len(prompts)))  # the original row at each batch position
    going = [True] * len(prompts)
    new: list[list[int]] = [[] for _ in prompts]
    last = pos[:, -1]
    noise = BlockNoise(seeds, logits.shape[-1]) if sampling.temperature > 0 else None
    for t in range(sampling.max_new_tokens):
        scores = filtered_logprobs(logits, sampling, mask)
        if noise is not None:
            scores = scores + noise.step(t).to(device)
        tokens = scores.argmax(-1)
        picked = tokens.tolist()
        for k, token in enumerate(picked):
            if going[k]:
                new[rows[k]].append(token)
        going = [g and token not in ends for g, token in zip(going, picked, strict=True)]
        if t + 1 == sampling.max_new_tokens or not any(going):
            break
        keep = rows_to_keep(going, floor)
        if (len(rows) - len(keep)) * COMPACT_WHEN >= len(rows):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            tokens, att, last = tokens[index], att[index], last[index]
            rows = [rows[k] for k in keep]
            going = [going[k] for k in keep]
            if noise is not None:
                noise.keep(keep)
        att = torch.cat([att, att.new_ones(len(rows), 1)], dim=-1)
        last = last + 1
        logits = model(
            input_ids=tokens[:, None], attention_mask=_step_mask(att, padded),
            position_ids=last[:, None], cache=cache, use_cache=True,
        ).logits[:, -1]
    return [cut_at_end(row, end_ids) for row in new]


Engine = Callable[
    [Any, list[list[int]], SamplingConfig, Sequence[int], Sequence[int], int, torch.Tensor | None],
    list[list[int]],
]

ENGINES: dict[str, Engine] = {"generate": generate_hf, "kv": generate_kv}
