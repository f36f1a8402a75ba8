"""The PyTorch fine-tuning loop behind `HFChatModel.finetune`, sized for a 7B model on a GPU.

Our own loop rather than TRL's trainer: it is short, it runs the same on CPU and GPU, and its
memory is what matters at scale:
- a LoRA student trains adapters injected into the resident base, in the base's own dtype
  under one autocast context (fp32 adapter weights), and the base is restored afterwards:
  no copy of the base, no fp32 copy at all;
- the output layer runs only at completion positions and in chunks, each recomputed in the
  backward pass, so no [batch, sequence, vocabulary] fp32 tensor ever exists;
- soft labels arrive precomputed with the rows (`soft_labels`, see
  `Scorer.number_distributions`), so the teacher need not be resident while students train,
  and its distributions are computed once for every seed and epoch;
- full fine-tuning of a model that cannot fit is refused before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.checkpoint import checkpoint

from sublearn.errors import SublearnError
from sublearn.models.recipe import StudentRecipe
from sublearn.store import atomic_path

if TYPE_CHECKING:
    from sublearn.models.hf import HFChatModel

# Bytes of fp32 logits per output-layer chunk: 64 MiB is ~110 positions of a 152k vocabulary
# (one chunk of 1,024 positions was 0.6 GB there) and thousands of the embedded base's.
CHUNK_BYTES = 64 * 2**20


def chunk_positions(columns: int) -> int:
    return max(16, CHUNK_BYTES // (4 * columns))
# Bytes per parameter for full fine-tuning with AdamW and fp32 master weights: weights,
# gradients, and the two moment estimates.
FULL_FT_BYTES_PER_PARAM = 16


def _example(model: HFChatModel, row: dict[str, Any], recipe: StudentRecipe, i: int):
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
        raise SublearnError(f"training row {i}: 'messages' must end with an assistant turn")
    ids, n_prompt = model.pair_ids(msgs[:-1], msgs[-1]["content"], close=True)
    soft = row.get("soft_labels")
    if recipe.labels == "soft":
        if soft is None:
            raise SublearnError(f"training row {i}: soft-label training needs the teacher's "
                                "'soft_labels' on every row")
        if soft.shape[0] != len(ids) - n_prompt:
            raise SublearnError(f"training row {i}: soft_labels has {soft.shape[0]} positions, "
                                f"the completion {len(ids) - n_prompt} tokens")
    if len(ids) > recipe.max_length:
        # Truncation keeps the prompt and the start of the completion; soft labels follow.
        ids = ids[: recipe.max_length]
        soft = soft[: max(0, recipe.max_length - n_prompt)] if soft is not None else None
    # With loss on every token, the "completion" starts after the first token.
    n = 1 if recipe.loss_on == "all" else n_prompt
    return ids, n, soft


def _lr_lambda(recipe: StudentRecipe, total: int):
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


def _batches(lengths: list[int], recipe: StudentRecipe, needed: int) -> list[list[int]]:
    """`needed` micro-batches of example indices, in a seeded order, epoch after epoch.

    With `group_by_length`, each window of 64 batches is sorted by length before it is cut, so
    a batch pads to a similar length (as transformers' group_by_length does); the batches are
    then shuffled so training does not run from long to short.
    """
    gen = torch.Generator().manual_seed(recipe.seed)
    out: list[list[int]] = []
    while len(out) < needed:
        perm = torch.randperm(len(lengths), generator=gen).tolist()
        if recipe.group_by_length:
            window = recipe.batch_size * 64
            perm = [i for w in range(0, len(perm), window)
                    for i in sorted(perm[w : w + window], key=lambda j: -lengths[j])]
        epoch = [perm[i : i + recipe.batch_size] for i in range(0, len(perm), recipe.batch_size)]
        if recipe.group_by_length:
            epoch = [epoch[i] for i in torch.randperm(len(epoch), generator=gen).tolist()]
        out += epoch
    return out[:needed]


def autocast(device: torch.device, dtype: torch.dtype):
    """One context for CPU and GPU: mixed precision when the weights are half precision."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors on `device` (GPU memory, or the machine's RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import os

    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


def check_full_fits(n_params: int, device: torch.device) -> None:
    need = n_params * FULL_FT_BYTES_PER_PARAM
    free = free_bytes(device)
    if need > free:
        raise SublearnError(
            f"full fine-tuning of {n_params / 1e9:.2f}B parameters needs about "
            f"{need / 2**30:.1f} GiB (fp32 weights, gradients and AdamW state) and "
            f"{device} has {free / 2**30:.1f} GiB free: use student.method = \"lora\""
        )


@contextmanager
def _trainable(base: HFChatModel, recipe: StudentRecipe) -> Iterator[torch.nn.Module]:
    """The network to train: LoRA adapters injected into the resident base (removed again
    on exit, leaving the base as it was), or a full fp32 copy for full fine-tuning."""
    if recipe.method == "full":
        import copy

        check_full_fits(sum(p.numel() for p in base.model.parameters()), base.device)
        net = copy.deepcopy(base.model).float()
        # A LoRA student trained before leaves the resident base frozen; the copy trains all.
        net.requires_grad_(True)
        yield net
        return
    import warnings

    from peft import LoraConfig, get_peft_model

    from sublearn.models.hf import _forget_peft

    # PEFT still calls a transformers 5 alias that warns on every student; not ours to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    net = get_peft_model(base.model, LoraConfig(
        r=recipe.lora_rank, lora_alpha=recipe.lora_alpha, lora_dropout=0.0,
        target_modules=recipe.lora_targets, bias="none", task_type="CAUSAL_LM",
        use_rslora=recipe.rslora,
    ))
    try:
        yield net
    finally:
        net.unload()
        _forget_peft(base.model)
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
    recipe: StudentRecipe,
    out_dir: Path,
    progress: bool = True,
) -> Path:
    """Train a student of `base` on chat rows; save a loadable folder at `out_dir`."""
    if not rows:
        raise SublearnError("no training rows: the filter kept nothing")
    examples = [_example(base, r, recipe, i) for i, r in enumerate(rows)]
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


def _train(base: HFChatModel, net: torch.nn.Module, examples: list, recipe: StudentRecipe,
           progress: bool) -> None:
    params = [p for p in net.parameters() if p.requires_grad]
    opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    opt = opt_cls[recipe.optimizer](params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    per_epoch = math.ceil(len(examples) / (recipe.batch_size * recipe.grad_accum))
    total = max(1, round(per_epoch * recipe.epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(recipe, total))
    batches = _batches([len(e[0]) for e in examples], recipe, total * recipe.grad_accum)
    columns = base.number_token_ids.to(base.device) if recipe.labels == "soft" else None
    lm = net.get_base_model() if hasattr(net, "get_base_model") else net
    ctx = autocast(base.device, base.dtype)

    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"training ({recipe.method}, {recipe.labels} labels)", total=total)
        for step in range(total):
            micro = [[examples[j] for j in batches[step * recipe.grad_accum + k]]
                     for k in range(recipe.grad_accum)]
            # A row's weight per completion token: 1 ("token"), or 1/its length ("example"),
            # normalised so the effective batch's weights sum to one.
            weights = [[1.0 if recipe.loss_average == "token" else 1.0 / (len(ids) - n)
                        for ids, n, _ in batch] for batch in micro]
            norm = sum(w * (len(ids) - n) for batch, ws in zip(micro, weights)
                       for (ids, n, _), w in zip(batch, ws))
            for batch, ws in zip(micro, weights):
                with ctx:
                    loss = _batch_loss(base, lm, batch, ws, columns) / norm
                loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.advance(task)


def _batch_loss(base: HFChatModel, lm: torch.nn.Module, batch: list, weights: list[float],
                columns: torch.Tensor | None) -> torch.Tensor:
    """The weighted sum of per-position losses over the batch's completion positions."""
    ids, att = base.right_padded([b[0] for b in batch])
    hidden = lm.get_decoder()(input_ids=ids, attention_mask=att).last_hidden_state
    # Positions whose next token is a completion token.
    pos = [(r, t) for r, (seq, n, _) in enumerate(batch) for t in range(n - 1, len(seq) - 1)]
    rows_idx = torch.tensor([p[0] for p in pos], device=ids.device)
    t_idx = torch.tensor([p[1] for p in pos], device=ids.device)
    h = hidden[rows_idx, t_idx]
    w = torch.tensor(weights, device=ids.device)[rows_idx]
    if columns is None:
        target = ids[rows_idx, t_idx + 1]
    else:
        target = torch.cat([b[2] for b in batch]).to(ids.device)
    head = lm.get_output_embeddings()
    total = h.new_zeros((), dtype=torch.float32)
    step = chunk_positions(head.weight.shape[0] if columns is None else len(columns))
    for s in range(0, len(pos), step):
        sl = slice(s, s + step)
        # Recomputed in backward: only one chunk's logits are ever alive.
        total = total + checkpoint(_chunk_loss, h[sl], head.weight, target[sl], w[sl], columns,
                                   use_reentrant=False)
    return total


def _chunk_loss(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, w: torch.Tensor,
                columns: torch.Tensor | None) -> torch.Tensor:
    if columns is None:
        logits = torch.nn.functional.linear(h, weight).float()
        loss = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    else:
        # Soft labels: the student's distribution restricted to the number tokens needs only
        # their rows of the output layer; KL(teacher || student) over those columns.
        s_logp = torch.nn.functional.linear(h, weight[columns]).float().log_softmax(-1)
        t_p = target.exp()
        loss = (t_p * (target - s_logp)).masked_fill(t_p == 0, 0.0).sum(-1)
    return (loss * w).sum()
