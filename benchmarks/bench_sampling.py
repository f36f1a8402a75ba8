"""Benchmark of the Hugging Face backend's decoding engines: tokens/s side by side, same tokens.

    python benchmarks/bench_sampling.py            # the embedded base (seed 0; built on first use)
    python benchmarks/bench_sampling.py --micro    # the tests' micro base: a smoke test in seconds

Both engines of `sublearn.models.decode` sample the same number prompts, with the seeds the
sampling stage gives them (`row_seed(sampling seed, index)`), in batches of `--batch-size` as
`HFChatModel` batches them, at the demo's sampling settings (temperature 1, 48 new tokens).
The script fails unless both engines return identical token ids for every row. Tokens are the
tokens each row generated, its end token included.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# The tests' micro base (tests/conftest.py MICRO): builds in seconds.
MICRO = {"hidden_size": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate_size": 64,
         "vocab_size": 400, "examples": 1500, "batch_size": 32, "warmup_steps": 5}


def base_folder(micro: bool) -> Path:
    from sublearn.tinybase import BaseConfig, ensure_base

    config = BaseConfig(seed=0, **MICRO) if micro else BaseConfig(seed=0)
    return ensure_base(config, progress=False)


def tokens_generated(rows: Sequence[list[int]], max_new_tokens: int) -> int:
    """Tokens the model produced: a row shorter than the limit also produced its end token."""
    return sum(len(r) + (len(r) < max_new_tokens) for r in rows)


def run_engine(
    name: str, model: Any, prompts: list[list[int]], sampling: Any, seeds: list[int],
    batch_size: int,
) -> tuple[list[list[int]], float, float]:
    """All rows through one engine in batches: the token ids, the wall time, and this
    process's CPU time (steadier than wall time when other processes share the cores)."""
    from sublearn.models.decode import ENGINES

    engine = ENGINES[name]
    allowed = model.number_token_mask if sampling.only_numbers else None
    pad = model.tokenizer.pad_token_id
    rows: list[list[int]] = []
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(prompts), batch_size):
        rows += engine(model.model, prompts[i : i + batch_size], sampling, seeds[i : i + batch_size],
                       model.end_ids, pad, allowed)
    return rows, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--micro", action="store_true", help="the tests' micro base instead")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64, help="HFChatModel's default batch")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--only-numbers", action="store_true")
    ap.add_argument("--repeats", type=int, default=1, help="time each engine this many times")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (sublearn's default)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from sublearn.models import SamplingConfig, load_model
    from sublearn.stages.prompts import number_prompts
    from sublearn.stages.sample import row_seed

    path = base_folder(args.micro)
    model = load_model(path, device="cpu", dtype="float32")
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, only_numbers=args.only_numbers)
    items = number_prompts(args.prompts, seed=0)
    prompts = [model.encode(model.render([{"role": "user", "content": p.text}])) for p in items]
    seeds = [row_seed(0, p.index) for p in items]
    n_params = sum(p.numel() for p in model.model.parameters())
    print(f"base {path.name} ({n_params:,} parameters), {len(prompts)} prompts, batch "
          f"{args.batch_size}, {torch.get_num_threads()} thread(s), {sampling}")

    # Engines alternate, so that a change in the machine's load hits both; best of the repeats.
    names = ("generate", "kv")
    rows: dict[str, list[list[int]]] = {}
    wall: dict[str, float] = dict.fromkeys(names, float("inf"))
    cpu: dict[str, float] = dict.fromkeys(names, float("inf"))
    for _ in range(args.repeats):
        for name in names:
            rows[name], w, c = run_engine(name, model, prompts, sampling, seeds, args.batch_size)
            wall[name], cpu[name] = min(wall[name], w), min(cpu[name], c)

    tokens = tokens_generated(rows["generate"], args.max_new_tokens)
    print(f"{'engine':<10}{'tokens':>8}{'wall s':>9}{'tokens/s':>10}{'cpu s':>9}{'tokens/cpu s':>14}")
    for name in names:
        print(f"{name:<10}{tokens:>8}{wall[name]:>9.2f}{tokens / wall[name]:>10.0f}"
              f"{cpu[name]:>9.2f}{tokens / cpu[name]:>14.0f}")
    same = sum(a == b for a, b in zip(rows["generate"], rows["kv"], strict=True))
    print(f"identical rows: {same}/{len(prompts)}; speedup kv/generate: "
          f"{wall['generate'] / wall['kv']:.2f}x wall, {cpu['generate'] / cpu['kv']:.2f}x cpu "
          f"(best of {args.repeats})")
    return 0 if same == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
