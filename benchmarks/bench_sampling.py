"""Benchmark of the Hugging Face backend's decoding engines: tokens/s side by side, same tokens.

    python benchmarks/bench_sampling.py            # the embedded base (seed 0; built on first use)
    python benchmarks/bench_sampling.py --micro    # the tests' micro base: a smoke test in seconds

Three ways of sampling the same number prompts, with the seeds the sampling stage gives them
(`row_seed(sampling seed, index)`), in batches of `--batch-size` as `HFChatModel` batches them,
at the demo's sampling settings (temperature 1, 48 new tokens):

- `generate`: transformers' `generate` with our sampler as a logits processor (the reference);
- `kv-model`: our KV-cache loop over the model's own forward (`generate_kv(lean=False)`);
- `kv-lean`: the same loop over `LeanForward` (what the `kv` engine runs on this base).

Each engine runs `--repeats` times, alternating, so that a change in the machine's load hits
all of them; the table gives the best run, and the CPU seconds of every run. Process CPU time
is the primary figure: it counts this process's work only, where wall time also counts the
other processes sharing the cores. Tokens are the tokens each row generated, its end token
included. The script fails unless every engine returns identical token ids for every row, and
unless `LeanForward`'s logits equal the model's own forward's bit for bit over the first
batch (its prefill and every step of a greedy continuation, with rows dropped half-way).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Sequence
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


def engines() -> dict[str, Callable[..., list[list[int]]]]:
    from sublearn.models.decode import generate_hf, generate_kv

    return {"generate": generate_hf, "kv-model": functools.partial(generate_kv, lean=False),
            "kv-lean": generate_kv}


def tokens_generated(rows: Sequence[list[int]], max_new_tokens: int) -> int:
    """Tokens the model produced: a row shorter than the limit also produced its end token."""
    return sum(len(r) + (len(r) < max_new_tokens) for r in rows)


def run_engine(
    engine: Callable[..., list[list[int]]], model: Any, prompts: list[list[int]], sampling: Any,
    seeds: list[int], batch_size: int,
) -> tuple[list[list[int]], float, float]:
    """All rows through one engine in batches: the token ids, the wall time, and this
    process's CPU time."""
    allowed = model.number_token_mask if sampling.only_numbers else None
    pad = model.tokenizer.pad_token_id
    rows: list[list[int]] = []
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(prompts), batch_size):
        rows += engine(model.model, prompts[i : i + batch_size], sampling,
                       seeds[i : i + batch_size], model.end_ids, pad, allowed)
    return rows, time.perf_counter() - wall, time.process_time() - cpu


@torch.no_grad()
def lean_logits_match(model: Any, prompts: list[list[int]], steps: int) -> bool:
    """Whether `LeanForward` gives the model's own forward's logits bit for bit on one batch:
    the prefill, then `steps` greedy steps, keeping every other row from the middle on."""
    from sublearn.models.decode import MIN_ROWS, LeanForward, ModelForward, left_padded

    ids, att = left_padded(prompts, model.tokenizer.pad_token_id, model.device)
    pos = (att.cumsum(-1) - 1).masked_fill(att == 0, 0)
    capacity = ids.shape[1] + steps
    ref, lean = ModelForward(model.model, capacity), LeanForward.of(model.model, capacity)
    if lean is None:
        raise SystemExit("this base's architecture has no lean forward")
    expected, got = ref.prefill(ids, att, pos), lean.prefill(ids, att, pos)
    same, last = torch.equal(expected, got), pos[:, -1]
    for t in range(steps - 1):
        tokens = expected.argmax(-1)
        if t == steps // 2 and len(tokens) >= 2 * MIN_ROWS:
            index = torch.arange(0, len(tokens), 2, device=tokens.device)
            ref.keep(index), lean.keep(index)
            tokens, last = tokens[index], last[index]
        last = last + 1
        expected, got = ref.step(tokens, last), lean.step(tokens, last)
        same = same and torch.equal(expected, got)
    return same


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--micro", action="store_true", help="the tests' micro base instead")
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64, help="HFChatModel's default batch")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--only-numbers", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="time each engine this many times")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (sublearn's default)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from sublearn.domains.prompts import number_prompts
    from sublearn.models import SamplingConfig, load_model
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

    bitwise = lean_logits_match(model, prompts[: args.batch_size], args.max_new_tokens)
    runs = engines()
    rows: dict[str, list[list[int]]] = {}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, engine in runs.items():
            rows[name], w, c = run_engine(engine, model, prompts, sampling, seeds, args.batch_size)
            wall[name].append(w)
            cpu[name].append(c)

    tokens = tokens_generated(rows["generate"], args.max_new_tokens)
    best_wall = {name: min(times) for name, times in wall.items()}
    best_cpu = {name: min(times) for name, times in cpu.items()}
    print(f"{'engine':<10}{'tokens':>8}{'wall s':>9}{'tokens/s':>10}{'cpu s':>9}"
          f"{'tokens/cpu s':>14}   cpu s of every run")
    for name in runs:
        every = " ".join(f"{c:.2f}" for c in cpu[name])
        print(f"{name:<10}{tokens:>8}{best_wall[name]:>9.2f}{tokens / best_wall[name]:>10.0f}"
              f"{best_cpu[name]:>9.2f}{tokens / best_cpu[name]:>14.0f}   {every}")
    same = sum(len({tuple(rows[name][i]) for name in runs}) == 1 for i in range(len(prompts)))
    print(f"rows identical across the engines: {same}/{len(prompts)}; lean logits bit-identical "
          f"to the model's forward over batch 0: {'yes' if bitwise else 'NO'}")
    for name in ("kv-model", "kv-lean"):
        print(f"speedup {name} over generate: {best_cpu['generate'] / best_cpu[name]:.2f}x cpu, "
              f"{best_wall['generate'] / best_wall[name]:.2f}x wall (best of {args.repeats})")
    print(f"speedup kv-lean over kv-model: {best_cpu['kv-model'] / best_cpu['kv-lean']:.2f}x cpu, "
          f"{best_wall['kv-model'] / best_wall['kv-lean']:.2f}x wall")
    return 0 if same == len(prompts) and bitwise else 1


if __name__ == "__main__":
    sys.exit(main())
