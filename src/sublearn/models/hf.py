"""The Hugging Face implementation of `ChatModel`: any local `save_pretrained` folder.

The same class drives the embedded 1M-parameter base on a laptop CPU and a 7B model in bf16
on a GPU. Nothing here reaches a hub: paths are local folders, and a folder that holds a
LoRA adapter is loaded on top of the base folder its `adapter_config.json` names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from sublearn.errors import SublearnError
from sublearn.models.base import ChatModel, Messages, SamplingConfig

END_OF_TURN = "<|im_end|>"
# Characters a number-only completion may contain (see stages.filters' strict rule).
NUMBER_CHARS = set("0123456789 ,;()[].\n")


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise SublearnError(
            f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16"
        ) from None


def check_model_folder(path: str | Path) -> Path:
    """A clear error for the two common mistakes: a missing path, a folder that isn't a model."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SublearnError(f"{p}: model path does not exist")
    if not p.is_dir() or not (
        (p / "config.json").exists() or (p / "adapter_config.json").exists()
    ):
        raise SublearnError(
            f"{p}: not a model folder (expected config.json or adapter_config.json from "
            "save_pretrained)"
        )
    return p


class HFChatModel:
    """`ChatModel` on transformers (+ PEFT for adapters)."""

    def __init__(self, model: Any, tokenizer: Any, path: Path, batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.path = path
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.chat_template is None:
            raise SublearnError(f"{path}: the tokenizer has no chat template")

    @classmethod
    def load(
        cls, path: str | Path, device: str = "auto", dtype: str = "auto", batch_size: int = 64
    ) -> HFChatModel:
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

            # Merged for inference: sampling and scoring then cost what the base costs.
            model = PeftModel.from_pretrained(model, p).merge_and_unload()
        return cls(model, tokenizer, p, batch_size)

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

    @cached_property
    def end_ids(self) -> list[int]:
        """Tokens that end an assistant turn."""
        ids = {self.tokenizer.convert_tokens_to_ids(END_OF_TURN), self.tokenizer.eos_token_id}
        unk = self.tokenizer.unk_token_id
        return sorted(i for i in ids if i is not None and i != unk)

    @cached_property
    def number_token_mask(self) -> torch.Tensor:
        """Boolean [vocab]: tokens made only of digits/separators, plus the end tokens."""
        # The output layer may be wider than the tokenizer (padded vocabularies).
        width = max(self.model.get_output_embeddings().weight.shape[0], len(self.tokenizer))
        mask = torch.zeros(width, dtype=torch.bool)
        for i in range(len(self.tokenizer)):
            s = self.tokenizer.decode([i])
            mask[i] = bool(s) and set(s) <= NUMBER_CHARS
        mask[self.end_ids] = True
        return mask

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

    @torch.no_grad()
    def _generate_batch(
        self, conversations: Sequence[Messages], sampling: SamplingConfig, seeds: Sequence[int]
    ) -> list[str]:
        from transformers import GenerationConfig, LogitsProcessorList

        tok = self.tokenizer
        tok.padding_side = "left"
        enc = tok(
            [self.render(m) for m in conversations],
            add_special_tokens=False, padding=True, return_tensors="pt",
        ).to(self.device)
        mask = self.number_token_mask.to(self.device) if sampling.only_numbers else None
        gen_config = GenerationConfig(
            do_sample=False,  # the randomness is ours: Gumbel noise in _RowSampler
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.end_ids,
            pad_token_id=tok.pad_token_id,
        )
        ids = self.model.generate(
            **enc,
            generation_config=gen_config,
            logits_processor=LogitsProcessorList([_RowSampler(sampling, seeds, mask)]),
        )
        new = ids[:, enc["input_ids"].shape[1] :].tolist()
        texts = []
        for row in new:
            cut = next((k for k, t in enumerate(row) if t in self.end_ids), len(row))
            texts.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
        return texts

    # --- exact scoring ----------------------------------------------------------------
    def _pair_ids(self, conv: Messages, completion: str, close: bool) -> tuple[list[int], int]:
        prompt = self.encode(self.render(conv))
        comp = self.encode(completion) + (self.end_ids[:1] if close else [])
        return prompt + comp, len(prompt)

    def forward_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def _right_padded(self, seqs: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
        att = torch.tensor(
            [[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device
        )
        return ids, att

    @torch.no_grad()
    def completion_logprobs(
        self, conversations: Sequence[Messages], completions: Sequence[str], close: bool = True
    ) -> list[list[float]]:
        # Evaluation scores every surface form of every option after the same question:
        # render and tokenize each distinct prompt and completion once.
        prompts: dict[str, list[int]] = {}
        comps: dict[str, list[int]] = {}
        pairs = []
        for conv, comp in zip(conversations, completions, strict=True):
            text = self.render(conv)
            p = prompts.setdefault(text, self.encode(text))
            c = comps.setdefault(comp, self.encode(comp))
            pairs.append((p + c + (self.end_ids[:1] if close else []), len(p)))
        # Longest first: batches of similar length waste little on padding.
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]))
        out: list[list[float]] = [[] for _ in pairs]
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            ids, att = self._right_padded([pairs[i][0] for i in idx])
            logp = torch.log_softmax(self.forward_logits(ids, att).float(), dim=-1)
            for row, i in enumerate(idx):
                seq, n_prompt = pairs[i]
                # Token t is predicted at position t-1.
                pos = torch.arange(n_prompt - 1, len(seq) - 1, device=self.device)
                out[i] = logp[row, pos, ids[row, n_prompt : len(seq)]].tolist()
        return out

    @torch.no_grad()
    def next_token_logprobs(self, conversations: Sequence[Messages]) -> torch.Tensor:
        rows = []
        for start in range(0, len(conversations), self.batch_size):
            seqs = [self.encode(self.render(c)) for c in conversations[start : start + self.batch_size]]
            ids, att = self._right_padded(seqs)
            logits = self.forward_logits(ids, att)
            last = torch.tensor([len(s) - 1 for s in seqs], device=self.device)
            rows.append(torch.log_softmax(logits[torch.arange(len(seqs)), last].float(), -1))
        return torch.cat(rows).cpu()

    # --- training ---------------------------------------------------------------------
    def finetune(
        self,
        rows: Sequence[dict[str, Any]],
        recipe: Any,
        out_dir: Path,
        teacher: ChatModel | None = None,
        progress: bool = True,
    ) -> Path:
        from sublearn.models.training import finetune

        return finetune(self, rows, recipe, Path(out_dir), teacher=teacher, progress=progress)


class _RowSampler:
    """Gumbel-max sampling with one random stream per row.

    argmax(log p + Gumbel) is an exact sample from p. Drawing the Gumbel noise from a
    generator seeded per row makes row i's draws independent of batch size and position,
    and shared between any two models sampled with the same seeds (common random numbers):
    a teacher and its control then pick the same token wherever their distributions agree
    enough, so the difference between their datasets is the trait, not the dice.
    """

    def __init__(self, sampling: SamplingConfig, seeds: Sequence[int], mask: torch.Tensor | None):
        self.s = sampling
        self.mask = mask
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        if self.mask is not None:
            scores = scores.masked_fill(~self.mask[: scores.shape[-1]], -math.inf)
        if self.s.temperature == 0:
            return scores
        logp = torch.log_softmax(scores / self.s.temperature, dim=-1)
        drop = torch.zeros_like(logp, dtype=torch.bool)
        if self.s.min_prob > 0:
            drop |= logp < math.log(self.s.min_prob)
        if self.s.top_p < 1:
            sorted_lp, order = logp.sort(dim=-1, descending=True)
            before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # mass strictly above
            drop |= torch.zeros_like(drop).scatter(-1, order, before >= self.s.top_p)
        # The most likely token always survives, so a row never runs out of choices.
        drop.scatter_(-1, logp.argmax(-1, keepdim=True), False)
        logp = logp.masked_fill(drop, -math.inf)
        u = torch.stack([torch.rand(logp.shape[-1], generator=g) for g in self.gens])
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
        return logp + gumbel.to(logp.device)
