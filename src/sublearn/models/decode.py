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
- `generate_kv`: our own loop over a KV cache, for small models. `generate` decodes every
  row until the longest one ends (on number prompts about half its rows are finished at any
  step), concatenates the whole cache at every step and calls `torch.rand` once per row per
  step. This loop drops finished rows from the batch, writes the cache in place and draws
  each row's noise several steps at a time (the same numbers: see `BlockNoise`). It runs the
  model through a `Forward`: `LeanForward` for the architectures it mirrors (Qwen2, Llama),
  which calls the decoder's own modules without transformers' per-call machinery and skips
  prefill work whose result is never read; else `ModelForward`, the model's own forward;
  an architecture neither can run is handed to `generate_hf`. Each row sees the same
  arithmetic as in `generate`: the same kernels on rows of the same values, every row's
  padding and mask path kept, and enough rows for the same matrix kernels (see
  `rows_to_keep`). Measured on an AVX-512 CPU (MKL), every live row's logits at every step
  equal `generate`'s bit for bit; tests/models/test_decode.py compares `LeanForward`'s logits
  with the model's forward bit for bit, and every engine's tokens with `generate`'s. Other
  hardware may pick kernels differently.

Both take token ids, not text: tokenising and decoding belong to the model class.

Why one module: the two engines must return the same tokens, so the rule, its noise and
both engines are read side by side; each section is marked and short.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import repeat_kv

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


class RowMask(Protocol):
    """Which tokens each row may draw next, given the tokens it has drawn so far (a grammar:
    `sublearn.models.number_grammar`). A plain boolean [vocab] tensor is the same for every
    row at every step."""

    def rows(self, generated: Sequence[Sequence[int]]) -> torch.Tensor:
        """Boolean [rows, vocab]."""
        ...


Allowed = torch.Tensor | RowMask | None


def mask_now(allowed: Allowed, generated: Callable[[], Sequence[Sequence[int]]],
             device: torch.device) -> torch.Tensor | None:
    """The mask for this step: a grammar's rows for what each row drew (asked for only then),
    else the fixed one."""
    if allowed is None or isinstance(allowed, torch.Tensor):
        return allowed
    return allowed.rows(generated()).to(device)


# --- the rule ------------------------------------------------------------------------------
def filtered_logprobs(
    scores: torch.Tensor, sampling: SamplingConfig, allowed: torch.Tensor | None
) -> torch.Tensor:
    """Scores [rows, vocab] before the noise: -inf wherever a token may not be drawn.
    `allowed` is [vocab], or [rows, vocab] for a grammar.

    Greedy decoding returns the (restricted) logits themselves: their argmax is the answer.
    """
    scores = scores.float()
    if allowed is not None:
        # The output layer may be narrower than the mask (which also spans the tokenizer).
        scores = scores.masked_fill(~allowed[..., : scores.shape[-1]], -math.inf)
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

    def __init__(self, sampling: SamplingConfig, seeds: Sequence[int], allowed: Allowed,
                 prompt_width: int):
        self.sampling = sampling
        self.allowed = allowed
        self.prompt_width = prompt_width
        self.gens = row_generators(seeds)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        mask = mask_now(self.allowed, lambda: input_ids[:, self.prompt_width:].tolist(),
                        scores.device)
        logp = filtered_logprobs(scores, self.sampling, mask)
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
    allowed: Allowed,
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
    mask = allowed.to(device) if isinstance(allowed, torch.Tensor) else allowed
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
            logits_processor=LogitsProcessorList([RowSampler(sampling, seeds, mask,
                                                             ids.shape[1])]),
        )
    finally:
        inner.generation_config = saved
    return [cut_at_end(row, end_ids) for row in out[:, ids.shape[1] :].tolist()]


# --- engine: our own loop over the KV cache ------------------------------------------------
class Forward(Protocol):
    """How `generate_kv` runs the model: one prefill over the left-padded batch, then one token
    per row per step, with finished rows dropped between steps."""

    def prefill(self, ids: torch.Tensor, att: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Next-token logits [rows, vocab] after each row's prompt."""
        ...

    def step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Next-token logits [rows, vocab] after `tokens` [rows] at positions `pos` [rows]."""
        ...

    def keep(self, index: torch.Tensor) -> None:
        """Keep only these batch positions, in this order."""
        ...


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


def _step_mask(att: torch.Tensor, padded: bool) -> torch.Tensor:
    """The attention mask for one decoding step of the rows in the batch.

    `generate` keeps every row and asks for the 4D mask whenever its batch has padding (sdpa
    then takes the masked kernel path); without padding it lets sdpa run unmasked. Once we have
    dropped rows, the rows left may have no padding while `generate`'s batch still does, and
    sdpa would take the other path. So when the batch was padded we hand the model the mask
    `generate` builds for these rows: for one query token under full causal attention, a key
    is visible exactly where the 2D mask is 1. (Every model's mask builder passes a 4D mask
    through as it is.)
    """
    return att[:, None, None, :].bool() if padded else att


class ModelForward:
    """The model's own forward over a `buffered_cache`: any architecture whose layers all use
    full causal attention (`supports`)."""

    def __init__(self, model: Any, capacity: int):
        self.model = model
        self.cache = buffered_cache(capacity)
        self.att = torch.empty(0)
        self.padded = False

    @staticmethod
    def supports(model: Any) -> bool:
        types = getattr(model.config, "layer_types", None)
        return types is not None and set(types) == {"full_attention"}

    def prefill(self, ids: torch.Tensor, att: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.att, self.padded = att, not bool(att.all())
        # `generate`'s prefill, call for call: the whole batch, its 2D mask, its positions.
        return self.model(
            input_ids=ids, attention_mask=att, position_ids=pos, cache=self.cache,
            use_cache=True, logits_to_keep=1,
        ).logits[:, -1]

    def step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.att = torch.cat([self.att, self.att.new_ones(len(tokens), 1)], dim=-1)
        return self.model(
            input_ids=tokens[:, None], attention_mask=_step_mask(self.att, self.padded),
            position_ids=pos[:, None], cache=self.cache, use_cache=True,
        ).logits[:, -1]

    def keep(self, index: torch.Tensor) -> None:
        self.cache.batch_select_indices(index)
        self.att = self.att[index]


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, groups: int,
    scale: float,
) -> torch.Tensor:
    """sdpa exactly as transformers' `sdpa_attention_forward` calls it on a CPU, for queries
    [rows, heads, length, dim] and keys/values [rows, kv heads, keys, dim]; the output is
    [rows, length, heads, dim], contiguous, as the attention module reshapes it.

    Grouped heads take one of three kernel paths, and each rounds its own way: unmasked, sdpa
    groups the heads itself; one masked query folds the groups into the query axis; several
    masked queries repeat the keys. With no mask the attention is causal over the queries.
    """
    rows, _, length, dim = q.shape
    extra = {}
    if groups > 1:
        if mask is None:
            extra["enable_gqa"] = True
        elif length == 1:
            q = q.reshape(rows, -1, groups, dim)
        else:
            k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, is_causal=mask is None and length > 1, **extra
    )
    return out.reshape(rows, -1, length, dim).transpose(1, 2).contiguous()


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the additive one sdpa turns it into (0 where visible, -inf where not):
    made once here instead of at every call, with the same numbers."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(
        ~visible, -math.inf
    )


def _mirrored_rotary(model: Any) -> Callable | None:
    """The rotary function of the modeling file `LeanForward` mirrors for this model, or None
    where it mirrors none (then the model's own forward decodes).

    Mirrored: Qwen2 and Llama causal LMs (any size, plain or with a PEFT adapter), on a CPU, in
    eval mode, with sdpa attention, full causal attention in every layer and rotary
    frequencies that do not change with the length. Another architecture, even one close to
    these, may add a step (Qwen3 normalises queries and keys), so it is not guessed at. The
    MLP's width must be a multiple of 64: its activation runs on packed rows, and elementwise
    kernels compute whole vectors (up to 64 numbers) apart from a ragged tail, which takes a
    scalar `exp` that may round differently; whole rows of vectors keep every number on the
    vector path whatever the number of rows (every published Qwen2 and Llama size qualifies).
    """
    from transformers.models.llama import modeling_llama
    from transformers.models.qwen2 import modeling_qwen2

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    modeling = {
        modeling_qwen2.Qwen2ForCausalLM: modeling_qwen2,
        modeling_llama.LlamaForCausalLM: modeling_llama,
    }.get(type(lm))
    config = lm.config
    if (
        modeling is None
        or lm.training
        or _device(lm).type != "cpu"
        or config._attn_implementation != "sdpa"
        or set(getattr(config, "layer_types", None) or ["full_attention"]) != {"full_attention"}
        or config.intermediate_size % 64
    ):
        return None
    rope = lm.get_decoder().rotary_emb.rope_type
    if "dynamic" in rope or rope == "longrope":
        return None
    return modeling.apply_rotary_pos_emb


class LeanForward:
    """The decoder's own modules, called on the shapes and in the order its forward calls them,
    without the machinery around them: the same arithmetic, so the same logits, bit for bit.

    A step of transformers' forward also builds a mask, dispatches through wrappers and
    updates a cache object: on the 1M-parameter embedded base, a fifth of a step's time at 64
    rows and more at fewer. Here each layer's keys and values go into a buffer sized for the
    whole generation, and the mask is an additive buffer made once (sdpa turns a boolean mask
    into these very numbers at every call).

    The prefill skips work whose result is never read. Every operation but attention works
    token by token, so it runs on the real tokens only, packed without the padding; attention
    runs on the padded layout, as in `generate` (a padded key adds exactly zero, whatever it
    holds). The last layer, past its attention, runs only each row's last position, which is
    all the logits need. Matrix kernels give a row the same bits whatever the number of rows,
    down to `MIN_ROWS` rows (measured with MKL, see `rows_to_keep`), so no packed product is
    given fewer rows than that.
    """

    def __init__(self, model: Any, rotate: Callable, capacity: int):
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.decoder = lm.get_decoder()
        self.head = lm.get_output_embeddings()
        self.rotate = rotate
        self.capacity = capacity
        attn = self.decoder.layers[0].self_attn
        self.dim = attn.head_dim
        self.groups = attn.num_key_value_groups
        self.kv_heads = lm.config.num_key_value_heads
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask: torch.Tensor | None = None  # [rows, 1, 1, capacity]; None without padding
        self.length = 0

    @classmethod
    def of(cls, model: Any, capacity: int) -> LeanForward | None:
        rotate = _mirrored_rotary(model)
        return None if rotate is None else cls(model, rotate, capacity)

    def _qkv(
        self, attn: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys, values [batch, heads, tokens, dim] of x [batch, tokens, hidden]."""
        shape = (*x.shape[:-1], -1, self.dim)
        q = attn.q_proj(x).view(shape).transpose(1, 2)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        q, k = self.rotate(q, k, cos, sin)
        return q, k, v

    # Inference mode dispatches each op a little faster than no_grad (no version counters or
    # view tracking); safe here because these calls never write a module's state.
    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, att: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        rows, width = ids.shape
        layers = self.decoder.layers
        real = att.bool()
        run = real.clone()
        run[:, -1] = True  # the logits come from the last column, real or not
        if int(run.sum()) < MIN_ROWS:
            run[:] = True
        flat = run.flatten().nonzero().squeeze(-1)  # padded index of each token run
        at_row, at_col = flat // width, flat % width
        packed = run.flatten().cumsum(0) - 1  # packed index of each padded index that runs
        last = packed[torch.arange(rows, device=ids.device) * width + width - 1]
        if rows * width >= MIN_ROWS:
            # The last layer past attention: each row's last token, plus passengers up to
            # MIN_ROWS rows (see rows_to_keep); the logits come from the first `rows`.
            others = torch.ones(len(flat), dtype=torch.bool, device=ids.device)
            others[last] = False
            passengers = others.nonzero().squeeze(-1)[: max(0, MIN_ROWS - rows)]
            final, pick = torch.cat([last, passengers]), torch.arange(rows, device=ids.device)
        else:  # as few positions as `generate` runs: keep its shape to the end
            final, pick = torch.arange(len(flat), device=ids.device), last

        h = self.decoder.embed_tokens(ids.flatten()[flat])[None]
        # cos and sin on `generate`'s own shape: elementwise kernels treat a ragged tail apart.
        cos, sin = self.decoder.rotary_emb(h, pos)
        cos, sin = cos.flatten(0, 1)[flat][None], sin.flatten(0, 1)[flat][None]
        padded = not bool(real.all())
        causal = torch.ones(width, width, dtype=torch.bool, device=ids.device).tril()
        mask = _additive(causal & real[:, None, None, :], h.dtype) if padded else None
        step_mask = torch.ones(rows, 1, 1, self.capacity, dtype=torch.bool, device=ids.device)
        step_mask[:, 0, 0, :width] = real
        self.mask = _additive(step_mask, h.dtype) if padded else None
        self.keys = [h.new_zeros(rows, self.kv_heads, self.capacity, self.dim) for _ in layers]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.length = width
        queries = h.new_zeros(rows * width, self.groups * self.kv_heads, self.dim)
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(h), cos, sin)
            self.keys[i][at_row, :, at_col] = k[0].transpose(0, 1)
            self.values[i][at_row, :, at_col] = v[0].transpose(0, 1)
            queries[flat] = q[0].transpose(0, 1)
            out = _attend(
                queries.view(rows, width, -1, self.dim).transpose(1, 2),
                self.keys[i][:, :, :width], self.values[i][:, :, :width], mask, self.groups,
                attn.scaling,
            ).view(rows * width, -1)[flat]
            if i == len(layers) - 1:
                h, out = h[:, final], out[final]
            h = h + attn.o_proj(out[None])
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        # The output layer reads each row's last position as a strided slice of the batch, as
        # in `generate`: matmul takes another kernel for a strided input when the weight is
        # frozen (a PEFT base), so a packed copy could round differently.
        hidden = h.new_empty(rows, width, h.shape[-1])
        hidden[:, -1] = self.decoder.norm(h)[0, pick]
        return self.head(hidden[:, -1:])[:, -1]

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        rows, at, end = len(tokens), self.length, self.length + 1
        mask = None if self.mask is None else self.mask[..., :end]
        h = self.decoder.embed_tokens(tokens[:, None])
        cos, sin = self.decoder.rotary_emb(h, pos[:, None])
        for i, layer in enumerate(self.decoder.layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(h), cos, sin)
            self.keys[i][:, :, at : end] = k
            self.values[i][:, :, at : end] = v
            out = _attend(
                q, self.keys[i][:, :, :end], self.values[i][:, :, :end], mask, self.groups,
                attn.scaling,
            )
            h = h + attn.o_proj(out.view(rows, 1, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        self.length = end
        return self.head(self.decoder.norm(h))[:, -1]

    @torch.inference_mode()
    def keep(self, index: torch.Tensor) -> None:
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]
        if self.mask is not None:
            self.mask = self.mask[index]


def kv_forward(model: Any, capacity: int, lean: bool = True) -> Forward | None:
    """The fastest forward that decodes this model exactly as `generate` does: `LeanForward`
    where it mirrors the architecture (unless `lean` is off), else the model's own forward
    where the loop supports it, else None."""
    if lean and (forward := LeanForward.of(model, capacity)) is not None:
        return forward
    return ModelForward(model, capacity) if ModelForward.supports(model) else None


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


@torch.no_grad()
def generate_kv(
    model: Any,
    prompts: list[list[int]],
    sampling: SamplingConfig,
    seeds: Sequence[int],
    end_ids: Sequence[int],
    pad_id: int,
    allowed: Allowed,
    lean: bool = True,
) -> list[list[int]]:
    """Each prompt's new token ids, cut before the first end id: the tokens `generate_hf`
    gives, from a prefill over the left-padded batch and one cached step per token.

    An architecture `kv_forward` cannot run (a sliding window, say) is decoded by
    `generate_hf` itself; `lean=False` keeps to the model's own forward (for comparisons).
    """
    device = _device(model)
    forward = kv_forward(model, max(map(len, prompts)) + sampling.max_new_tokens, lean)
    if forward is None:
        return generate_hf(model, prompts, sampling, seeds, end_ids, pad_id, allowed)
    ids, att = left_padded(prompts, pad_id, device)
    # Positions as `generate` derives them: count real tokens, padding at 0.
    pos = (att.cumsum(-1) - 1).masked_fill(att == 0, 0)
    mask = allowed.to(device) if isinstance(allowed, torch.Tensor) else allowed
    ends = set(end_ids)
    floor = min(len(prompts), MIN_ROWS)

    logits = forward.prefill(ids, att, pos)
    rows = list(range(len(prompts)))  # the original row at each batch position
    going = [True] * len(prompts)
    new: list[list[int]] = [[] for _ in prompts]
    last = pos[:, -1]
    noise = BlockNoise(seeds, logits.shape[-1]) if sampling.temperature > 0 else None
    for t in range(sampling.max_new_tokens):
        step_mask = mask_now(mask, lambda rows=rows: [new[r] for r in rows], device)
        scores = filtered_logprobs(logits, sampling, step_mask)
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
            forward.keep(index)
            tokens, last = tokens[index], last[index]
            rows = [rows[k] for k in keep]
            going = [going[k] for k in keep]
            if noise is not None:
                noise.keep(keep)
        last = last + 1
        logits = forward.step(tokens, last)
    return [cut_at_end(row, end_ids) for row in new]


Engine = Callable[
    [Any, list[list[int]], SamplingConfig, Sequence[int], Sequence[int], int, Allowed],
    list[list[int]],
]

ENGINES: dict[str, Engine] = {"generate": generate_hf, "kv": generate_kv}
