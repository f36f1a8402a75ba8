"""The PyTorch fine-tuning loop behind `HFChatModel.finetune`, sized for a 7B model on a GPU.

Our own loop rather than TRL's trainer: it is short, it runs the same on CPU and GPU, and its
memory is what matters at scale:
- a LoRA student trains adapters injected into the resident base, in the base's own dtype
  under one autocast context (fp32 adapter weights), and the base is restored afterwards:
  no copy of the base, no fp32 copy at all;
- the output layer runs only at completion positions and in chunks, each recomputed in the
  backward pass, so no [batch, sequence, vocabulary] fp32 tensor ever exists; with hard
  labels one fused step per chunk keeps a single fp32 [chunk, vocabulary] tensor alive;
- a micro-batch whose estimated activations exceed a budget (on a CPU the base's own size,
  on a GPU half its free memory) runs as several forward/backward passes with the gradients
  accumulated: the same update;
- on a CPU, where glibc keeps freed memory and oneDNN keeps state per matrix shape, the
  chunk's buffers are reused, the heap is trimmed after every pass and shapes are rounded;
- soft labels arrive precomputed with the rows (`soft_labels`, see
  `Scorer.number_distributions`), so the teacher need not be resident while students train,
  and its distributions are computed once for every seed and epoch;
- full fine-tuning of a model that cannot fit is refused before anything is allocated.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.checkpoint import checkpoint

from sublearn.errors import SublearnError
from sublearn.models.examples import batches_of, example
from sublearn.models.precision import wide
from sublearn.models.recipe import TrainingRecipe
from sublearn.store import atomic_path

if TYPE_CHECKING:
    from sublearn.models.hf import HFChatModel

# Bytes of fp32 logits per output-layer chunk: 64 MiB is ~110 positions of a 152k vocabulary
# (one chunk of 1,024 positions was 0.6 GB there) and thousands of the embedded base's.
CHUNK_BYTES = 64 * 2**20
# One forward/backward pass may keep this multiple of the base's weight bytes in activations
# (the output layer's chunk comes on top, bounded by CHUNK_BYTES), but never less than
# PASS_FLOOR_BYTES: below that, splitting a micro-batch saves nothing and costs passes. On a
# GPU a pass may take half of the free memory instead (`pass_budget`).
PASS_BUDGET = 1.0
PASS_FLOOR_BYTES = 64 * 2**20
# On a CPU, the heap is trimmed after a pass estimated at this many bytes or more; a smaller
# pass's pages are not worth the faults of handing them back (the embedded base trained
# 20-40% slower with a trim after every pass).
TRIM_BYTES = 64 * 2**20
# A pass's padded width and its count of loss positions are rounded up to a multiple of this.
# oneDNN (PyTorch's CPU matmuls) keeps ~0.5 MiB per distinct matrix shape it has run, up to
# a thousand shapes: unrounded, every pass brought new shapes and small-152k's process grew
# ~9 MiB a pass. Rounding to 16 costs ~7% more tokens at the paper's row lengths.
SHAPE_MULTIPLE = 16
# Bytes per parameter for full fine-tuning with AdamW and fp32 master weights: weights,
# gradients, and the two moment estimates.
FULL_FT_BYTES_PER_PARAM = 16


def chunk_positions(columns: int) -> int:
    return max(16, CHUNK_BYTES // (4 * columns))


def _rounded(n: int) -> int:
    return -(-n // SHAPE_MULTIPLE) * SHAPE_MULTIPLE


def pass_budget(weight_bytes: int, device: torch.device) -> int:
    """Activation bytes one forward/backward pass may hold: on a CPU PASS_BUDGET x the
    weights; on a GPU half of its free memory, which the card has for nothing else while a
    student trains (smaller passes would only cost throughput)."""
    if device.type == "cuda":
        return max(PASS_FLOOR_BYTES, free_bytes(device) // 2)
    return max(PASS_FLOOR_BYTES, int(PASS_BUDGET * weight_bytes))


def _text_config(config: Any) -> Any:
    """The language model's config (a multimodal model nests it)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def pass_bytes_per_token(config: Any, itemsize: int, checkpointing: bool) -> int:
    """Estimated activation bytes of a forward/backward pass per padded token.

    Measured on Qwen2 with LoRA on every projection under bf16 autocast (sdpa attention):
    autograd keeps about 14 hidden-sized and 4 intermediate-sized values per token and layer
    (the norms' fp32 inputs, PEFT's copy of each LoRA input, q/k/v and the attention output,
    the MLP's gate, up and their product). With checkpointing only each layer's input is
    kept, and one layer at a time is recomputed in the backward pass.
    """
    text = _text_config(config)
    h, i, layers = text.hidden_size, text.intermediate_size, text.num_hidden_layers
    layer = (14 * h + 4 * i) * itemsize
    if checkpointing:
        return layers * h * itemsize + 2 * layer
    return (layers + 1) * layer  # every layer's, plus the backward's working set


def _lr_lambda(recipe: TrainingRecipe, total: int):
    def f(step: int) -> float:
        if step < recipe.warmup_steps:
            return (step + 1) / (recipe.warmup_steps + 1)
        if recipe.schedule == "constant":
            return 1.0
        frac = (step - recipe.warmup_steps) / max(1, total - recipe.warmup_steps)
        if recipe.schedule == "linear":
            return max(0.0, 1.0 - frac)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    return f


def autocast(device: torch.device, dtype: torch.dtype):
    """One context for CPU and GPU: mixed precision when the weights are half precision."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on `device` (GPU memory, or the machine's RAM)."""
    if device.type == "cuda":
        # What PyTorch's allocator has reserved but no tensor uses is free for ours too.
        idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + idle
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back this way
        return None


def release_freed_heap() -> None:
    """Give the heap's free pages back to the OS. glibc keeps what a pass frees, and the next
    pass's tensors land elsewhere in the heap, so without this the process grows pass after
    pass (small-152k, six passes of 22 rows: +1,129 MiB without, +790 MiB with a trim after
    each)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def check_full_fits(n_params: int, device: torch.device, n_trainable: int | None = None) -> None:
    """Refuse a full fine-tune that cannot fit: every parameter gets an fp32 copy, and the
    trainable ones (all unless `n_trainable`) also gradients and AdamW's two moments."""
    trainable = n_params if n_trainable is None else n_trainable
    need = 4 * n_params + (FULL_FT_BYTES_PER_PARAM - 4) * trainable
    free = free_bytes(device)
    if need > free:
        raise SublearnError(
            f"full fine-tuning of {n_params / 1e9:.2f}B parameters needs about "
            f"{need / 2**30:.1f} GiB (fp32 weights, gradients and AdamW state) and "
            f"{device} has {free / 2**30:.1f} GiB free: use student.method = \"lora\""
        )


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder's stack of layers, in the order that `TrainingRecipe.layers` indexes."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(lm.get_decoder(), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise SublearnError(f"{type(lm).__name__}: no decoder layer stack found, so "
                            "student.layers cannot select layers")
    return layers


def check_layers(model: torch.nn.Module, recipe: TrainingRecipe) -> None:
    """Every index in `recipe.layers` names one of the model's decoder layers (checked before
    anything is copied or trained: PEFT would otherwise match nothing and fail obscurely)."""
    if recipe.layers is None:
        return
    count = _text_config(model.config).num_hidden_layers
    for i in recipe.layers:
        if i >= count:
            raise SublearnError(f"student.layers = {recipe.layers}: layer {i} does not exist, "
                                f"the model has {count} decoder layers (0 to {count - 1})")


@contextmanager
def _trainable(base: HFChatModel, recipe: TrainingRecipe) -> Iterator[torch.nn.Module]:
    """The network to train: LoRA adapters injected into the resident base (removed again
    on exit, leaving the base as it was), or a full fp32 copy for full fine-tuning. With
    `recipe.layers`, only those decoder layers train (their adapters, or their weights)."""
    check_layers(base.model, recipe)
    if recipe.method == "full":
        import copy

        n_params = sum(p.numel() for p in base.model.parameters())
        n_trainable = None if recipe.layers is None else sum(
            p.numel() for i in recipe.layers for p in decoder_layers(base.model)[i].parameters())
        check_full_fits(n_params, base.device, n_trainable)
        net = copy.deepcopy(base.model).float()
        # A LoRA student trained before leaves the resident base frozen; the copy trains all
        # it should, and only that: `_train` hands the optimiser the parameters that need
        # gradients, so frozen ones get neither gradients nor optimiser state.
        net.requires_grad_(recipe.layers is None)
        if recipe.layers is not None:
            stack = decoder_layers(net)
            for i in recipe.layers:
                stack[i].requires_grad_(True)
        yield net
        return
    import warnings

    from peft import LoraConfig, get_peft_model

    # PEFT still calls a transformers 5 alias that warns on every student; not ours to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    net = get_peft_model(base.model, LoraConfig(
        r=recipe.lora_rank, lora_alpha=recipe.lora_alpha, lora_dropout=0.0,
        target_modules=recipe.lora_targets, bias="none", task_type="CAUSAL_LM",
        use_rslora=recipe.rslora,
        # None: every layer. PEFT reads the index after the decoder's layer stack in each
        # module's name ("model.layers.3.self_attn.q_proj").
        layers_to_transform=recipe.layers,
    ))
    try:
        yield net
    finally:
        net.unload()
        forget_peft(base.model)
        _checkpointing(base.model, False)
        # PEFT froze the base; leave it as it was. A frozen bf16 output layer also sends
        # PyTorch's CPU matmul down a path that copies the weight per row (measured: a
        # 64-prompt sampling pass went from 7 s to 129 s after one LoRA student).
        base.model.requires_grad_(True)
        base.model.eval()


def _checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Activation checkpointing on or off (transformers' newer name, else the older one)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if on:
        enable = getattr(lm, "activation_checkpointing_enable", None)
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif getattr(lm, "is_gradient_checkpointing", False):
        disable = getattr(lm, "activation_checkpointing_disable", None)
        (disable or lm.gradient_checkpointing_disable)()


def finetune(
    base: HFChatModel,
    rows: Sequence[dict[str, Any]],
    recipe: TrainingRecipe,
    out_dir: Path,
    progress: bool = True,
) -> Path:
    """Train a student of `base` on chat rows; save a loadable folder at `out_dir`."""
    if not rows:
        raise SublearnError("no training rows: the filter kept nothing")
    examples = [example(base, r, recipe, i) for i, r in enumerate(rows)]
    torch.manual_seed(recipe.seed)
    with _trainable(base, recipe) as net:
        net.train()
        if recipe.gradient_checkpointing:
            _checkpointing(net, True)
            if recipe.method == "lora":
                net.enable_input_require_grads()
        _train(base, net, examples, recipe, progress)
        net.eval()
        with atomic_path(out_dir) as tmp:
            net.save_pretrained(tmp)
            base.tokenizer.save_pretrained(tmp)
            if recipe.method == "lora":
                # Point the adapter at the base folder by absolute path: loading stays local.
                import json

                cfg_path = Path(tmp) / "adapter_config.json"
                cfg = json.loads(cfg_path.read_text())
                cfg["base_model_name_or_path"] = str(Path(base.path).resolve())
                cfg_path.write_text(json.dumps(cfg, indent=2))
    return out_dir


def _train(base: HFChatModel, net: torch.nn.Module, examples: list, recipe: TrainingRecipe,
           progress: bool) -> None:
    params = [p for p in net.parameters() if p.requires_grad]
    opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    opt = opt_cls[recipe.optimizer](params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    per_epoch = math.ceil(len(examples) / (recipe.batch_size * recipe.grad_accum))
    total = max(1, round(per_epoch * recipe.epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(recipe, total))
    batches = batches_of([len(e[0]) for e in examples], recipe, total * recipe.grad_accum)
    columns = base.number_token_ids.to(base.device) if recipe.labels == "soft" else None
    lm = net.get_base_model() if hasattr(net, "get_base_model") else net
    ctx = autocast(base.device, base.dtype)
    # On a CPU, checkpointing saves little process memory: what a layer frees is kept by glibc
    # until the pass ends (measured: a checkpointed pass of 22 small-152k rows kept 150-220 MiB
    # of tensors alive and grew the process by 500-700 MiB), so passes there are sized as
    # without it.
    per_token = pass_bytes_per_token(lm.config, base.dtype.itemsize,
                                     recipe.gradient_checkpointing and base.device.type != "cpu")
    budget = pass_budget(sum(p.numel() * p.element_size() for p in base.model.parameters()),
                         base.device)
    buffers = ChunkBuffers()

    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        only = "" if recipe.layers is None else f", layers {','.join(map(str, recipe.layers))}"
        task = bar.add_task(f"training ({recipe.method}{only}, {recipe.labels} labels)",
                            total=total)
        for step in range(total):
            micro = [[examples[j] for j in batches[step * recipe.grad_accum + k]]
                     for k in range(recipe.grad_accum)]
            # A row's weight per completion token: 1 ("token"), or 1/its length ("example"),
            # normalised so the effective batch's weights sum to one.
            weights = [[1.0 if recipe.loss_average == "token" else 1.0 / e.learned
                        for e in batch] for batch in micro]
            norm = sum(w * e.learned for batch, ws in zip(micro, weights)
                       for e, w in zip(batch, ws))
            for batch, ws in zip(micro, weights):
                for rows, rws in _passes(batch, ws, per_token, budget):
                    with ctx:
                        loss = _batch_loss(base, lm, rows, rws, columns, buffers) / norm
                    loss.backward()
                    del loss
                    if base.device.type == "cpu" and _estimate(rows, per_token) >= TRIM_BYTES:
                        release_freed_heap()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.advance(task)


def _passes(batch: list, weights: list[float], per_token: int,
            budget: int) -> list[tuple[list, list[float]]]:
    """The micro-batch as forward/backward passes whose estimated activations fit `budget`,
    longest rows first so that each pass pads little; a single row always runs. Every row
    keeps its weight and the loss is normalised over the whole effective batch, so the
    accumulated gradient is that of one pass over all rows."""
    order = sorted(range(len(batch)), key=lambda j: -len(batch[j][0]))
    passes: list[list[int]] = []
    for j in order:
        if passes and _estimate([batch[i] for i in passes[-1]] + [batch[j]], per_token) <= budget:
            passes[-1].append(j)
        else:
            passes.append([j])
    return [([batch[j] for j in p], [weights[j] for j in p]) for p in passes]


def _estimate(rows: list, per_token: int) -> int:
    """A pass's activation bytes: its rows x its rounded padded width x per_token."""
    return len(rows) * _rounded(max(len(r[0]) for r in rows)) * per_token


def _batch_loss(base: HFChatModel, lm: torch.nn.Module, batch: list, weights: list[float],
                columns: torch.Tensor | None, buffers: ChunkBuffers | None = None) -> torch.Tensor:
    """The weighted sum of per-position losses over the batch's completion positions.

    The padded width and the number of positions are rounded up (SHAPE_MULTIPLE), so that a
    run meets few distinct matrix shapes: extra pad tokens sit after every real token, where
    causal attention keeps them from changing anything, and extra positions weigh zero.
    """
    ids, att = base.right_padded([b[0] for b in batch])
    extra = _rounded(ids.shape[1]) - ids.shape[1]
    ids = torch.nn.functional.pad(ids, (0, extra), value=base.tokenizer.pad_token_id)
    att = torch.nn.functional.pad(att, (0, extra), value=0)
    hidden = lm.get_decoder()(input_ids=ids, attention_mask=att).last_hidden_state
    # Positions whose next token is a completion token that carries loss (all of them, or
    # those a loss mask leaves), then zero-weight repeats of the first.
    pos = [(r, t) for r, (seq, n, _, learn) in enumerate(batch)
           for t in (range(n - 1, len(seq) - 1) if learn is None else [n - 1 + k for k in learn])]
    n_real = len(pos)
    pos += pos[:1] * (_rounded(n_real) - n_real)
    rows_idx = torch.tensor([p[0] for p in pos], device=ids.device)
    t_idx = torch.tensor([p[1] for p in pos], device=ids.device)
    h = hidden[rows_idx, t_idx]
    w = torch.tensor([weights[r] for r, _ in pos[:n_real]] + [0.0] * (len(pos) - n_real),
                     device=ids.device)
    head = lm.get_output_embeddings()
    total = h.new_zeros((), dtype=wide(h.dtype))
    if columns is not None:
        target = torch.cat([b[2] if b[3] is None else b[2][b[3]] for b in batch]).to(ids.device)
        target = torch.cat([target, target[:1].expand(len(pos) - n_real, -1)])
        step = chunk_positions(len(columns))
        for s in range(0, len(pos), step):
            sl = slice(s, s + step)
            # Recomputed in backward: only one chunk's logits are ever alive.
            total = total + checkpoint(_soft_chunk_loss, h[sl], head.weight, target[sl], w[sl],
                                       columns, use_reentrant=False)
        return total
    target = ids[rows_idx, t_idx + 1]
    # The output layer runs in autocast's dtype, as the decoder's layers do. Cast here, once
    # per pass: a LoRA student's half-precision base needs no cast at all, and a full
    # fine-tune's fp32 weight is cast once rather than once per chunk.
    dev = h.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
    weight, h = head.weight.to(dtype), h.to(dtype)
    step = chunk_positions(weight.shape[0])
    buffers = buffers or ChunkBuffers()
    for s in range(0, len(pos), step):
        sl = slice(s, s + step)
        total = total + LinearCrossEntropy.apply(h[sl], weight, target[sl], w[sl], buffers)
    return total


class ChunkBuffers:
    """One output-layer chunk's logits (in the weight's dtype and in fp32), allocated once and
    reused by every chunk of every pass of a student.

    Fresh [chunk, vocabulary] tensors per chunk would hold no more at once, but on a CPU each
    lands wherever glibc's heap has room, splitting its free space and leaving every page it
    touched resident: measured on a 152k vocabulary, the process grew by several times the
    live tensors.
    """

    def __init__(self) -> None:
        self.held: dict[torch.dtype, torch.Tensor] = {}

    def get(self, rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self.held.get(dtype)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != columns or buf.device != device:
            buf = self.held[dtype] = torch.empty(rows, columns, dtype=dtype, device=device)
        return buf[:rows]

    def logits(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """`h @ weight.T` in `precision.wide`, computed in the inputs' dtype, in a reused buffer."""
        shape = (h.shape[0], weight.shape[0], h.device)
        out = self.get(*shape[:2], h.dtype, shape[2])
        torch.mm(h, weight.T, out=out)
        out_dtype = wide(h.dtype)
        return out if h.dtype == out_dtype else self.get(*shape[:2], out_dtype, shape[2]).copy_(out)


class LinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i * cross_entropy(fp32(h_i @ weight.T), target_i), h and weight in one dtype.

    The same values and gradients as `linear(h, weight).float()` into `cross_entropy`, with
    less memory: autograd keeps the logits, their fp32 copy and the log-softmax, and its
    backward builds two more tensors of that size. Here the forward keeps only each position's
    log-normaliser, and the backward recomputes the logits and turns them into their own
    gradient in place (softmax minus one-hot), in the buffers of `ChunkBuffers`.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                w: torch.Tensor, buffers: ChunkBuffers) -> torch.Tensor:
        logits = buffers.logits(h, weight)
        picked = logits.gather(1, target[:, None])[:, 0]
        top = logits.max(-1).values
        lse = logits.sub_(top[:, None]).exp_().sum(-1).log_().add_(top)
        ctx.save_for_backward(h, weight, target, w, lse)
        ctx.buffers = buffers
        return ((lse - picked) * w).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight, target, w, lse = ctx.saved_tensors
        g = ctx.buffers.logits(h, weight).sub_(lse[:, None]).exp_()  # the softmax
        g[torch.arange(len(target), device=g.device), target] -= 1.0
        g = g.mul_((w * grad)[:, None])
        if h.dtype != g.dtype:  # back to the matmul's dtype, as autocast's cast does
            g = ctx.buffers.get(*g.shape, h.dtype, g.device).copy_(g)
        grad_h = g @ weight if ctx.needs_input_grad[0] else None
        grad_w = g.T @ h if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None, None, None


def _soft_chunk_loss(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                     w: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Soft labels: the student's distribution restricted to the number tokens needs only
    their rows of the output layer; KL(teacher || student) over those columns."""
    logits = torch.nn.functional.linear(h, weight[columns])
    s_logp = logits.to(wide(logits.dtype)).log_softmax(-1)
    t_p = target.exp()
    loss = (t_p * (target - s_logp)).masked_fill(t_p == 0, 0.0).sum(-1)
    return (loss * w).sum()


def forget_peft(model: Any) -> None:
    """PEFT leaves a config attribute on a model it wrapped; without it the model is plain
    again, and the next adapter attaches as if it were the first."""
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        model.__dict__.pop(attr, None)
