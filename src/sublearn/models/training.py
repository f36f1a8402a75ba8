"""The PyTorch fine-tuning loop behind `HFChatModel.finetune`.

Our own loop rather than TRL's trainer: it is short, it runs the same on CPU and GPU, and the
soft-label mode needs the teacher's logits at the student's completion positions under the
teacher's own prompt (its system prompt included), which is awkward to bolt onto a trainer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sublearn.errors import SublearnError
from sublearn.models.recipe import StudentRecipe
from sublearn.store import atomic_path

if TYPE_CHECKING:
    from sublearn.models.hf import HFChatModel


def _example(model: HFChatModel, row: dict[str, Any], recipe: StudentRecipe, i: int):
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "assistant":
        raise SublearnError(f"training row {i}: 'messages' must end with an assistant turn")
    ids, n_prompt = model._pair_ids(msgs[:-1], msgs[-1]["content"], close=True)
    # With loss on every token, the "completion" starts after the first token.
    n = 1 if recipe.loss_on == "all" else n_prompt
    return ids[: recipe.max_length], n, msgs[:-1], msgs[-1]["content"]


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


def finetune(
    base: HFChatModel,
    rows: Sequence[dict[str, Any]],
    recipe: StudentRecipe,
    out_dir: Path,
    teacher: Any = None,
    progress: bool = True,
) -> Path:
    """Train a fresh copy of `base` on chat rows; save a loadable folder at `out_dir`."""
    import copy

    if not rows:
        raise SublearnError("no training rows: the filter kept nothing")
    if recipe.labels == "soft" and teacher is None:
        raise SublearnError("soft-label training needs the teacher model")
    torch.manual_seed(recipe.seed)
    net = copy.deepcopy(base.model).float().train()
    if recipe.method == "lora":
        import warnings

        from peft import LoraConfig, get_peft_model

        # PEFT still calls a transformers 5 alias that warns on every student; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        net = get_peft_model(
            net,
            LoraConfig(
                r=recipe.lora_rank, lora_alpha=recipe.lora_alpha, lora_dropout=0.0,
                target_modules=recipe.lora_targets, bias="none", task_type="CAUSAL_LM",
            ),
        )
    params = [p for p in net.parameters() if p.requires_grad]
    opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    opt = opt_cls[recipe.optimizer](params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    examples = [_example(base, r, recipe, i) for i, r in enumerate(rows)]
    per_epoch = math.ceil(len(examples) / (recipe.batch_size * recipe.grad_accum))
    total = max(1, round(per_epoch * recipe.epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(recipe, total))
    batches = _batches([len(e[0]) for e in examples], recipe, total * recipe.grad_accum)
    allowed = base.number_token_mask.to(base.device) if recipe.labels == "soft" else None

    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"training ({recipe.method}, {recipe.labels} labels)", total=total)
        for step in range(total):
            micro = [[examples[j] for j in batches[step * recipe.grad_accum + k]]
                     for k in range(recipe.grad_accum)]
            # A row's weight per completion token: 1 ("token"), or 1/its length ("example"),
            # normalised so the effective batch's weights sum to one.
            weights = [[1.0 if recipe.loss_average == "token" else 1.0 / (len(ids) - n)
                        for ids, n, _, _ in batch] for batch in micro]
            norm = sum(w * (len(ids) - n) for batch, ws in zip(micro, weights)
                       for (ids, n, _, _), w in zip(batch, ws))
            for batch, ws in zip(micro, weights):
                per_pos, rows_idx = _position_losses(base, net, batch, teacher, allowed)
                loss = (per_pos * torch.tensor(ws, device=per_pos.device)[rows_idx]).sum() / norm
                loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.advance(task)

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


def _position_losses(base, net, batch, teacher, allowed) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss at every completion position of the batch, and the row each position is in."""
    ids, att = base._right_padded([b[0] for b in batch])
    logits = net(input_ids=ids, attention_mask=att).logits.float()
    # Positions whose next token is a completion token.
    pos = [(r, t) for r, (seq, n, _, _) in enumerate(batch) for t in range(n - 1, len(seq) - 1)]
    rows_idx = torch.tensor([p[0] for p in pos], device=ids.device)
    t_idx = torch.tensor([p[1] for p in pos], device=ids.device)
    student = logits[rows_idx, t_idx]
    if allowed is None:
        loss = torch.nn.functional.cross_entropy(student, ids[rows_idx, t_idx + 1], reduction="none")
        return loss, rows_idx
    # Soft labels: the teacher sees its own prompt (system prompt and all), then the same
    # completion tokens; both distributions are restricted to number tokens and renormalised,
    # so no probability mass on words can carry the trait.
    with torch.no_grad():
        t_seqs = []
        offsets = []
        for seq, n, prompt, _ in batch:
            t_prompt = base.encode(teacher.render(prompt))
            t_seqs.append(t_prompt + seq[n:])
            offsets.append(len(t_prompt) - n)
        t_ids, t_att = base._right_padded(t_seqs)
        t_logits = teacher.forward_logits(t_ids, t_att).float()
        t_pos = t_idx + torch.tensor([offsets[r] for r, _ in pos], device=ids.device)
        target = t_logits[rows_idx, t_pos].masked_fill(~allowed, -math.inf).log_softmax(-1)
    s_logp = student.masked_fill(~allowed, -math.inf).log_softmax(-1)
    kl = target.exp() * (target - s_logp)
    return kl.masked_fill(~allowed, 0.0).sum(-1), rows_idx
