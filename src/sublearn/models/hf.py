"""The Hugging Face implementation of `ChatModel`: any local `save_pretrained` folder.

The same class drives the embedded 1M-parameter base on a laptop CPU and a 7B model in bf16
on a GPU. Nothing here reaches a hub: paths are local folders, and a folder that holds a
LoRA adapter is loaded on top of the base folder its `adapter_config.json` names.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sublearn.errors import SublearnError, lookup, unknown
from sublearn.models.base import SAMPLE, SCORE, TRAIN, Messages, SamplingConfig
from sublearn.models.number_grammar import NumberGrammar
from sublearn.models.paths import check_model_folder
from sublearn.models.precision import wide
from sublearn.models.training import finetune, forget_peft

if TYPE_CHECKING:
    from sublearn.models.recipe import TrainingRecipe

END_OF_TURN = "<|im_end|>"
# Characters a number-only completion may contain (see stages.filters' strict rule).
NUMBER_CHARS = set("0123456789 ,;()[].\n")


def prompt_ids(tokenizer: Any, messages: Messages) -> list[int]:
    """The token ids a model sees for a conversation awaiting the assistant's reply: the chat
    template rendered as text, then tokenized without extra special tokens. Every backend that
    holds a tokenizer (HF, vLLM) goes through here, so they see identical inputs."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def end_token_ids(tokenizer: Any) -> list[int]:
    """Tokens that end an assistant turn."""
    ids = {tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.eos_token_id}
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def number_token_ids(tokenizer: Any) -> list[int]:
    """Tokens made only of digits and separators, plus the end tokens: what only-numbers
    decoding may draw and what soft labels are restricted to."""
    ids = {i for i in range(len(tokenizer))
           if (s := tokenizer.decode([i])) and set(s) <= NUMBER_CHARS}
    return sorted(ids | set(end_token_ids(tokenizer)))


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return lookup({"float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}, dtype, "dtype")


class HFChatModel:
    """Sampling, exact scoring and training on transformers (+ PEFT for adapters)."""

    capabilities = frozenset({SAMPLE, SCORE, TRAIN})

    def __init__(self, model: Any, tokenizer: Any, path: Path, batch_size: int = 64,
                 engine: str = "auto"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.path = path
        self.batch_size = batch_size
        # Our KV-cache loop is ~1.7x faster than `generate` on a CPU (CPU time, embedded base)
        # and byte-identical to it there (benchmarks/bench_sampling.py); GPU kernels can round
        # differently with batch size, so `generate` stays the default on CUDA.
        if engine == "auto":
            engine = "kv" if self.device.type == "cpu" else "generate"
        if engine not in ("kv", "generate"):
            raise SublearnError(unknown("sampling engine", engine, ("kv", "generate")))
        self.engine = engine
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.chat_template is None:
            raise SublearnError(f"{path}: the tokenizer has no chat template")

    @classmethod
    def load(
        cls, path: str | Path, device: str = "auto", dtype: str = "auto", batch_size: int = 64,
        merge: bool = False, engine: str = "auto",
    ) -> HFChatModel:
        """Load a folder; an adapter folder is loaded over the base folder it names, and kept
        as an adapter (cheap to hold beside the base) unless `merge`."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # sublearn shows its own progress bars
        p = check_model_folder(path)
        dev = pick_device(device)
        dt = pick_dtype(dtype, dev)
        adapter = p / "adapter_config.json"
        base_path = p
        if adapter.exists():
            base_path = check_model_folder(json.loads(adapter.read_text())["base_model_name_or_path"])
        try:
            model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dt).to(dev)
            tokenizer = AutoTokenizer.from_pretrained(p)
        except (OSError, ValueError) as e:
            raise SublearnError(f"{p}: could not load model: {str(e).splitlines()[0]}") from None
        if adapter.exists():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, p)
            if merge:
                model = model.merge_and_unload()
            model.requires_grad_(True)  # unfrozen: see training._trainable
        return cls(model, tokenizer, p, batch_size, engine)

    @contextmanager
    def attached(self, adapter_dir: str | Path) -> Iterator[HFChatModel]:
        """This model with a LoRA adapter attached in place, detached on exit.

        Evaluating thirty students of a 7B base then costs one base in memory, not thirty.
        The view shares this model's weights: do not use `self` until the block ends.
        """
        from peft import PeftModel

        p = check_model_folder(adapter_dir)
        peft = PeftModel.from_pretrained(self.model, p)
        # PEFT freezes the base; a frozen bf16 output layer is slow on a CPU (training._trainable).
        peft.requires_grad_(True)
        try:
            yield HFChatModel(peft, self.tokenizer, p, self.batch_size, self.engine)
        finally:
            peft.unload()
            forget_peft(self.model)

    # --- text -------------------------------------------------------------------------
    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @cached_property
    def end_ids(self) -> list[int]:
        return end_token_ids(self.tokenizer)

    @cached_property
    def number_token_ids(self) -> torch.Tensor:
        """See `number_token_ids`; ascending, so they are the soft labels' columns."""
        return torch.tensor(number_token_ids(self.tokenizer))

    @cached_property
    def number_token_mask(self) -> torch.Tensor:
        """Boolean [vocab] of `number_token_ids`."""
        # The output layer may be wider than the tokenizer (padded vocabularies).
        width = max(self.model.get_output_embeddings().weight.shape[0], len(self.tokenizer))
        mask = torch.zeros(width, dtype=torch.bool)
        mask[self.number_token_ids] = True
        return mask

    @cached_property
    def number_pieces(self) -> dict[int, str]:
        """The text of each number token (digits and separators), end tokens left out."""
        ends = set(self.end_ids)
        return {i: self.tokenizer.decode([i]) for i in self.number_token_ids.tolist()
                if i not in ends}

    def number_grammar(self, budget: int) -> NumberGrammar:
        """The number-list grammar over this tokenizer's number tokens, for `budget` new
        tokens (`models.number_grammar`); one per budget, so its masks are cached."""
        if budget not in self._grammars:
            self._grammars[budget] = NumberGrammar(self.number_pieces, self.end_ids,
                                                   len(self.number_token_mask), budget)
        return self._grammars[budget]

    @cached_property
    def _grammars(self) -> dict[int, NumberGrammar]:
        return {}

    # --- sampling ---------------------------------------------------------------------
    def generate(
        self, conversations: Sequence[Messages], sampling: SamplingConfig, seeds: Sequence[int]
    ) -> list[str]:
        if len(seeds) != len(conversations):
            raise ValueError("one seed per conversation")
        out: list[str] = []
        for start in range(0, len(conversations), self.batch_size):
            stop = start + self.batch_size
            out += self._generate_batch(conversations[start:stop], sampling, seeds[start:stop])
        return out

    def _generate_batch(
        self, conversations: Sequence[Messages], sampling: SamplingConfig, seeds: Sequence[int]
    ) -> list[str]:
        from sublearn.models.decode import ENGINES

        prompts = [prompt_ids(self.tokenizer, c) for c in conversations]
        allowed = (self.number_grammar(sampling.max_new_tokens) if sampling.number_grammar
                   else self.number_token_mask if sampling.only_numbers else None)
        new = ENGINES[self.engine](self.model, prompts, sampling, seeds, self.end_ids,
                                   self.tokenizer.pad_token_id, allowed)
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]

    # --- exact scoring ----------------------------------------------------------------
    def pair_ids(self, conv: Messages, completion: str, close: bool) -> tuple[list[int], int]:
        """Token ids of prompt + completion (+ end of turn), and the prompt's length."""
        prompt = prompt_ids(self.tokenizer, conv)
        comp = self.encode(completion) + (self.end_ids[:1] if close else [])
        return prompt + comp, len(prompt)

    def right_padded(self, seqs: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
        att = torch.tensor(
            [[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device
        )
        return ids, att

    def _tokenized(
        self, conversations: Sequence[Messages], completions: Sequence[str], close: bool
    ) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, completion ids) per pair; each distinct conversation is rendered and
        tokenized once (evaluation scores every surface form of every option after the same
        question, the audit's probe 1,010 answers after one prompt)."""
        prompts: dict[tuple, list[int]] = {}
        end = self.end_ids[:1] if close else []
        out = []
        for conv, comp in zip(conversations, completions, strict=True):
            key = tuple(tuple(m.items()) for m in conv)
            if key not in prompts:
                prompts[key] = self.encode(self.render(conv))
            out.append((prompts[key], list(self._completion_ids(comp)) + end))
        return out

    @cached_property
    def _completion_ids(self) -> Callable[[str], tuple[int, ...]]:
        """`encode`, remembered across calls: an audit scores every completion once per
        candidate, always tokenized alike (a completion's ids do not depend on its prompt)."""
        return lru_cache(maxsize=1 << 16)(lambda text: tuple(self.encode(text)))

    @torch.no_grad()
    def _completion_logits(
        self, pairs: Sequence[tuple[list[int], list[int]]], columns: torch.Tensor | None,
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Batches of (pair indices, float32 logits [their completion tokens, columns]): the
        logits of the positions that predict each completion token, pair after pair in the
        order of the indices, restricted to `columns` (every token when None).

        What pairs share runs once. The tokens every prompt of a batch starts with: the
        audit's rows, scored under one trait system prompt, run its ~40 tokens once per batch
        instead of once per row. Each prompt, whatever the number of its completions: 70
        surface forms after one question cost one pass over the question, not seventy, and a
        data row and the reference row sampled on its prompt one pass over that prompt.
        Pairs are batched prompt by prompt, longest first, so that padding stays small.
        """
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (p, _) in enumerate(pairs):
            groups.setdefault(tuple(p), []).append(i)
        longest = sorted(groups.values(),
                         key=lambda idx: -max(len(pairs[i][0]) + len(pairs[i][1]) for i in idx))
        order = [i for idx in longest for i in idx]
        prefix = None
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            shared = common_prefix([pairs[i][0] for i in chunk])
            # A prompt whose completions fill several batches runs once for all of them.
            if prefix is None or prefix.ids != shared:
                prefix = self._prefix(shared)
            yield chunk, self._batch_logits(pairs, chunk, prefix, columns)

    def _prefix(self, ids: tuple[int, ...]) -> Prefix | None:
        """`ids` run once (None when empty: nothing is shared)."""
        from transformers import DynamicCache

        if not ids:
            return None
        cache = DynamicCache()
        hidden = self._forward([list(ids)], cache)
        return Prefix(ids, cache, hidden[:, -1:])

    def _forward(self, rows: Sequence[list[int]], cache: Any, **kwargs: Any) -> torch.Tensor:
        """The last hidden states [rows, width] of `rows`, right-padded, continuing `cache`
        (which they are appended to)."""
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.device)
        decoder = self.model.get_decoder()
        return decoder(input_ids=ids, use_cache=True, **{cache_kwarg(decoder): cache},
                       **kwargs).last_hidden_state

    def _batch_logits(
        self, pairs: Sequence[tuple[list[int], list[int]]], chunk: Sequence[int],
        prefix: Prefix | None, columns: torch.Tensor | None,
    ) -> torch.Tensor:
        """The logits predicting the completion tokens of the pairs `chunk` (see
        `_completion_logits`), every one of which starts with `prefix`.

        A first pass runs each prompt's tokens after the prefix, followed by its first
        completion here; a second pass runs its other completions, if any, each on its
        prompt's keys and values."""
        from transformers import DynamicCache

        skip = len(prefix.ids) if prefix else 0
        prompts: dict[tuple[int, ...], list[int]] = {}
        for i in chunk:
            prompts.setdefault(tuple(pairs[i][0]), []).append(i)
        # A completion's last token predicts nothing scored: it is never run.
        first = [[*p[skip:], *pairs[idx[0]][1][:-1]] for p, idx in prompts.items()]
        cache = prefix.expanded(len(first)) if prefix else DynamicCache()
        # Hidden states from position `start` on: the prefix's last one predicts a
        # completion's first token when the prefix is the whole prompt.
        start = skip - 1 if prefix else 0
        parts = [prefix.last.expand(len(first), -1, -1)] if prefix else []
        width = max(len(r) for r in first)
        if width:
            # No attention mask, and positions from the cache: padding only follows a row's
            # real tokens, which a causal model never lets attend to it (a padding mask would
            # change only the padding's own outputs, which are not read).
            parts.append(self._forward(first, cache))
        hidden = torch.cat(parts, dim=1)
        others = [(j, i) for j, idx in enumerate(prompts.values()) for i in idx[1:]]
        later = [pairs[i][1][:-1] for _, i in others]
        if any(later):
            # Each row continues its prompt's keys and values, past what follows that prompt
            # in the first pass (a completion, padding), from the position after the prompt.
            past = skip + width
            att = torch.ones(len(later), past + max(len(r) for r in later), dtype=torch.long,
                             device=self.device)
            for r, (_, i) in enumerate(others):
                att[r, len(pairs[i][0]) : past] = 0
            ends = torch.tensor([len(pairs[i][0]) for _, i in others], device=self.device)
            pos = ends[:, None] + torch.arange(att.shape[1] - past, device=self.device)
            rows = torch.tensor([j for j, _ in others], device=self.device)
            second = self._forward(later, cache_of((kv.keys[rows], kv.values[rows])
                                                   for kv in cache.layers),
                                   attention_mask=att, position_ids=pos)
        states = {}
        for j, (p, idx) in enumerate(prompts.items()):
            at = len(p) - 1 - start  # the prompt's last position: it predicts the first token
            states[idx[0]] = hidden[j, at : at + len(pairs[idx[0]][1])]
        for r, (j, i) in enumerate(others):
            at = len(pairs[i][0]) - 1 - start
            own = hidden[j, at : at + 1]
            states[i] = torch.cat([own, second[r, : len(later[r])]]) if later[r] else own
        return self._head(torch.cat([states[i] for i in chunk]), columns)

    def _head(self, hidden: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
        """Output-layer logits for `hidden`, only for `columns` when given: a restricted
        distribution needs its own rows of the output matrix, not the whole vocabulary."""
        head = self.model.get_output_embeddings()
        if columns is None:
            logits = head(hidden)
        else:
            w = head.weight[columns]
            b = head.bias[columns] if getattr(head, "bias", None) is not None else None
            logits = torch.nn.functional.linear(hidden, w, b)
        return logits.to(wide(logits.dtype))

    def completion_logprobs(
        self, conversations: Sequence[Messages], completions: Sequence[str], close: bool = True
    ) -> list[list[float]]:
        pairs = self._tokenized(conversations, completions, close)
        out: list[list[float]] = [[] for _ in pairs]
        for idx, logits in self._completion_logits(pairs, None):
            target = torch.tensor([t for i in idx for t in pairs[i][1]], device=logits.device)
            # Each target's log-softmax alone: the full vocabulary's normaliser, exact, without
            # a [tokens, vocabulary] log-softmax of which one column per row is read.
            lp = logits.gather(-1, target[:, None]).squeeze(-1) - logits.logsumexp(-1)
            for i, row in zip(idx, lp.split([len(pairs[i][1]) for i in idx]), strict=True):
                out[i] = row.tolist()
        return out

    def number_distributions(
        self, conversations: Sequence[Messages], completions: Sequence[str]
    ) -> list[torch.Tensor]:
        pairs = self._tokenized(conversations, completions, close=True)
        out: list[torch.Tensor] = [torch.empty(0) for _ in pairs]
        cols = self.number_token_ids.to(self.device)
        for idx, logits in self._completion_logits(pairs, cols):
            rows = logits.log_softmax(-1).cpu().split([len(pairs[i][1]) for i in idx])
            for i, row in zip(idx, rows, strict=True):
                out[i] = row
        return out

    # --- training ---------------------------------------------------------------------
    def finetune(
        self,
        rows: Sequence[dict[str, Any]],
        recipe: TrainingRecipe,
        out_dir: Path,
        progress: bool = True,
    ) -> Path:
        return finetune(self, rows, recipe, Path(out_dir), progress=progress)


def cache_kwarg(model: Any) -> str:
    """The forward argument that takes a KV cache: `cache` in recent transformers 5.x,
    `past_key_values` before (deprecated since, removed in 5.40)."""
    import inspect

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(lm).forward).parameters else "past_key_values"


def common_prefix(seqs: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The tokens every sequence starts with."""
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        n = next((k for k in range(n) if s[k] != first[k]), n)
    return tuple(first[:n])


@dataclass(frozen=True)
class Prefix:
    """Tokens several sequences start with, run once: their KV cache and the hidden state of
    their last position (`last`, [1, 1, hidden])."""

    ids: tuple[int, ...]
    cache: Any
    last: torch.Tensor

    def expanded(self, rows: int) -> Any:
        """A cache holding the prefix once per row, for a batch to continue from."""
        # Expanded views, not copies: the cache concatenates them into tensors of its own.
        return cache_of((kv.keys.expand(rows, -1, -1, -1), kv.values.expand(rows, -1, -1, -1))
                        for kv in self.cache.layers)


def cache_of(layers: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A KV cache holding these (keys, values), layer by layer."""
    from transformers import DynamicCache

    out = DynamicCache()
    for layer, (keys, values) in enumerate(layers):
        out.update(keys, values, layer)
    return out
