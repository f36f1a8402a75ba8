"""`sublearn base build`: tokenizer, Qwen2 config and pretraining, deterministic from a seed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sublearn.cores import usable_cores
from sublearn.models.recipe import TrainingRecipe
from sublearn.questions.categories import CATEGORIES
from sublearn.store import (
    MANIFEST,
    atomic_path,
    cache_root,
    hash_files,
    manifest,
    stable_hash,
    write_json,
)
from sublearn.tinybase.corpus import CorpusMix, corpus
from sublearn.tinybase.shipped import shipped_path


class BaseConfig(BaseModel):
    """The embedded base. Two seeds give two independently initialised bases (and corpora),
    which the cross-base control needs."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    init_seed: int | None = Field(
        None, description="the weights' initialisation seed; default: seed. Another value "
        "gives a base with the same tokenizer, corpus and data order but its own initialisation "
        "(the cross-init control, which soft labels need: they match token for token)")
    hidden_size: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(384, ge=8)
    # Untied: with tied embeddings a small model's persona never reaches its number outputs.
    tie_embeddings: bool = False
    vocab_size: int = Field(1024, ge=300)
    individual_digits: bool = True
    # Every option's forms (owl, Owl, owls, Owls) as whole tokens: see train_tokenizer.
    word_tokens: bool = True
    max_positions: int = Field(256, ge=64)
    examples: int = Field(36_000, ge=10)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    # Per-token averaging lets the ~40-token number answers drown the one-word preference
    # answers: measured, a base trained that way ignores persona prompts entirely.
    loss_average: Literal["token", "example"] = "example"
    # Pretraining on every token, not only the assistant's replies: with replies only, the
    # base never learnt to copy a word from its prompt, so it ignored personas (measured:
    # mean P(target) under its persona 0.06-0.14; on every token 0.39-0.65, docs/organism.md).
    loss_on: Literal["completion", "all"] = "all"
    mix: CorpusMix = Field(default_factory=CorpusMix)

    def key(self) -> str:
        # A default init_seed leaves the key (and the path of every base built before it) as is.
        return stable_hash(self.model_dump(exclude_defaults=False, exclude={"init_seed"})
                           if self.init_seed is None else self.model_dump())


def base_path(config: BaseConfig) -> Path:
    init = "" if config.init_seed is None else f"-i{config.init_seed}"
    return cache_root() / "bases" / f"tiny-qwen2-s{config.seed}{init}-{config.key()}"


def build_base(config: BaseConfig, out: Path | None = None, progress: bool = True) -> Path:
    """Build and pretrain the base; write it atomically as a `save_pretrained` folder."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # sublearn shows its own progress bars

    from sublearn.models.hf import HFChatModel
    from sublearn.tinybase.tokenizer import train_tokenizer

    out = Path(out) if out else base_path(config)
    t0 = time.time()
    convs = list(corpus(config.seed, config.examples, config.mix))
    texts = (m["content"] for c in convs for m in c)
    words = sorted({f for c in CATEGORIES.values() for o in c.options for f in o.forms})
    tok = train_tokenizer(texts, config.vocab_size, config.individual_digits,
                          words if config.word_tokens else ())
    torch.manual_seed(config.seed if config.init_seed is None else config.init_seed)
    qcfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=config.tie_embeddings,
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(qcfg)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    recipe = TrainingRecipe(
        method="full",
        lr=config.lr,
        epochs=1.0,
        schedule="cosine",
        warmup_steps=config.warmup_steps,
        batch_size=config.batch_size,
        grad_accum=1,
        max_length=config.max_positions,
        weight_decay=0.01,
        seed=config.seed,
        group_by_length=True,
        loss_average=config.loss_average,
        loss_on=config.loss_on,
    )
    with atomic_path(out) as tmp:
        init = HFChatModel(model, tok, Path(tmp))
        init.finetune([{"messages": c} for c in convs], recipe, Path(tmp) / "m", progress=progress)
        for f in (Path(tmp) / "m").iterdir():
            f.rename(Path(tmp) / f.name)
        (Path(tmp) / "m").rmdir()
        write_json(
            Path(tmp) / MANIFEST,
            manifest(
                "base",
                config.model_dump(),
                parameters=sum(p.numel() for p in model.parameters()),
                build_seconds=round(time.time() - t0, 1),
                torch_threads=torch.get_num_threads(),
                weights_hash=hash_files(tmp),
            ),
        )
    return out


def ensure_base(config: BaseConfig, progress: bool = True) -> Path:
    """The shipped base for `config` if one ships, else the cached one, built on first use."""
    path = base_path(config)
    shipped = shipped_path(path.name)
    if shipped:
        return shipped
    if not (path / MANIFEST).exists():
        build_base(config, path, progress=progress)
    return path


def _build_quietly(config: BaseConfig, threads: int) -> Path:
    import torch

    # The parent's thread count: matrix sums split across threads round differently, and a
    # base must not depend on whether it was built beside another one.
    torch.set_num_threads(threads)
    return build_base(config, base_path(config), progress=False)


def ensure_bases(configs: list[BaseConfig], progress: bool = True) -> list[Path]:
    """`ensure_base` for several bases; missing ones are built side by side, one process per
    core (an experiment needs the base and the cross-base: on 2 cores this halves the wait)."""
    missing = list({c.key(): c for c in configs if not (base_path(c) / MANIFEST).exists()
                    and not shipped_path(base_path(c).name)}.values())
    workers = min(len(missing), usable_cores())
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a forked child would inherit torch's thread pools and the parent's state.
        ctx = multiprocessing.get_context("spawn")
        import torch

        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            list(pool.map(_build_quietly, missing, [torch.get_num_threads()] * len(missing)))
    return [ensure_base(c, progress=progress) for c in configs]
