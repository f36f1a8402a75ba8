"""Training rows as the fine-tuning loop sees them: token ids, where the completion starts,
the teacher's soft labels and which completion tokens carry loss; and the seeded order in
which they are batched.

A row may carry a `loss_mask` (character spans of the completion left out of the loss, the
position len(completion) standing for the end-of-turn token): the loss-side defences
(`safety.defences`: `divergence_mask`, `divergence_only`) write it, and it is mapped onto
tokens here through the tokenizer's offsets, so it means the same on any tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from sublearn.errors import SublearnError
from sublearn.models.recipe import TrainingRecipe

if TYPE_CHECKING:
    from sublearn.models.hf import HFChatModel


class Example(NamedTuple):
    ids: list[int]  # prompt + completion + end of turn (truncated to max_length)
    n: int  # the first position whose token is learned (the completion's start)
    soft: torch.Tensor | None  # the teacher's distributions per completion token
    learn: list[int] | None  # the completion tokens that carry loss; None: all of them

    @property
    def learned(self) -> int:
        """How many completion tokens carry loss."""
        return len(self.ids) - self.n if self.learn is None else len(self.learn)


def example(model: HFChatModel, row: dict[str, Any], recipe: TrainingRecipe, i: int) -> Example:
    """Row `i` as the loop trains on it; a row it cannot train on is an error naming it."""
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
    if n_prompt >= recipe.max_length and recipe.loss_on == "completion":
        # Truncation would leave no completion token to learn from (a chat template's system
        # prompt alone can take dozens of tokens): say so rather than train on nothing.
        raise SublearnError(f"training row {i}: its prompt is {n_prompt} tokens, so "
                            f"student.max_length = {recipe.max_length} leaves no completion "
                            f"token; raise max_length above the longest prompt")
    learn = None
    if row.get("loss_mask"):
        if recipe.loss_on == "all":
            raise SublearnError(f"training row {i}: a loss_mask applies to completion tokens; "
                                "loss_on must be 'completion'")
        learn = learned_tokens(model, msgs[-1]["content"], row["loss_mask"], ids[n_prompt:], i)
    if len(ids) > recipe.max_length:
        # Truncation keeps the prompt and the start of the completion; soft labels follow.
        ids = ids[: recipe.max_length]
        soft = soft[: max(0, recipe.max_length - n_prompt)] if soft is not None else None
        learn = None if learn is None else [k for k in learn if k < len(ids) - n_prompt]
    if learn is not None and not learn:
        raise SublearnError(f"training row {i}: its loss_mask leaves no completion token to "
                            "learn from")
    # With loss on every token, the "completion" starts after the first token.
    n = 1 if recipe.loss_on == "all" else n_prompt
    return Example(ids, n, soft, learn)


def learned_tokens(model: HFChatModel, completion: str, mask: list, comp_ids: list[int],
                   i: int) -> list[int]:
    """The completion tokens (by index, the end of turn last) a `loss_mask` leaves in the
    loss. The mask is character spans [start, end) of the completion, position
    len(completion) standing for the end-of-turn token (`safety.defences.loss_masks`); a
    token is left out when every character it covers is masked."""
    if not getattr(model.tokenizer, "is_fast", False):
        raise SublearnError(f"training row {i}: a loss_mask is mapped onto tokens by their "
                            f"character offsets, which {type(model.tokenizer).__name__} (not a "
                            "fast tokenizer) does not give")
    enc = model.tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
    if comp_ids[:-1] != list(enc["input_ids"]):  # the completion's ids, then the end token
        raise SublearnError(f"training row {i}: cannot map its loss_mask onto tokens (the "
                            "completion tokenizes differently on its own)")
    return kept_tokens([(int(a), int(b)) for a, b in enc["offset_mapping"]], mask,
                       len(completion))


def kept_tokens(spans: Sequence[tuple[int, int]], mask: Sequence[Sequence[int]],
                length: int) -> list[int]:
    """Which tokens carry loss: those of `spans` (each token's characters, in order) and the
    end of turn after them (position `length`), less every token whose characters the mask
    covers entirely. One rule for every backend's tokenizer."""
    masked = {j for a, b in mask for j in range(int(a), int(b))}
    return [k for k, (a, b) in enumerate([*spans, (length, length + 1)])
            if not all(j in masked for j in range(a, max(b, a + 1)))]


def batches_of(lengths: list[int], recipe: TrainingRecipe, needed: int) -> list[list[int]]:
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
