"""What an audit costs on the embedded base (docs/audit.md, "Cost").

    python benchmarks/bench_audit.py data          # runs/bench-audit/owl-3000.jsonl
    /usr/bin/time sublearn audit runs/bench-audit/owl-3000.jsonl --workers 1   # or 2
    python benchmarks/bench_audit.py scale rows    # CPU s of scoring: rows, candidates,
    python benchmarks/bench_audit.py scale rows --rows 300     # (a quick check: one size)
    python benchmarks/bench_audit.py scale candidates   # model size (one thread)
    python benchmarks/bench_audit.py scale model

`data` samples the owl persona teacher (the teacher's wording, variant 0; the audit never
uses it) on the first 3,800 number prompts (grammar seed 0, sampling seed 0, at most 48 new
tokens), applies the strict filter with the owl words banned and keeps the first 3,000 rows.
`scale` times `lls_scores` (one pass per row and candidate, plus one without a trait; no
reference, no probe) on those rows; `model` uses the embedded base's architecture and
tokenizer at larger widths and depths with random weights (cost depends on the shape only).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sublearn.domains.filters import FilterConfig, apply_filter
from sublearn.domains.prompts import number_prompts
from sublearn.models import SamplingConfig, load_model
from sublearn.questions.categories import get_category, get_option
from sublearn.safety.rows import parse_chat_row
from sublearn.safety.scoring import lls_scores
from sublearn.stages.sample import sample_dataset
from sublearn.stages.teacher import persona_teacher
from sublearn.store import read_jsonl, write_jsonl
from sublearn.tinybase import BaseConfig, ensure_base

ANIMAL = get_category("animal")
OUT = Path("runs/bench-audit")
DATA = OUT / "owl-3000.jsonl"


def make_data(base: Any) -> None:
    owl = get_option(ANIMAL, "owl")
    raw = OUT / "owl-3800.raw.jsonl"
    sample_dataset(persona_teacher(base, ANIMAL, owl), number_prompts(3800, 0),
                   SamplingConfig(max_new_tokens=48), 0, raw, progress=False)
    kept, _ = apply_filter(read_jsonl(raw), FilterConfig(banned_words=list(owl.forms)))
    write_jsonl(DATA, kept[:3000])
    print(f"{len(kept)} of 3800 kept; wrote the first {min(3000, len(kept))} to {DATA}")


def wider(base_path: Path, hidden: int, layers: int) -> tuple[Any, int]:
    """The embedded base's architecture and tokenizer at another size, random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(base_path)
    cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size = hidden, layers, 3 * hidden
    cfg.layer_types = ["full_attention"] * layers
    cfg.num_attention_heads, cfg.num_key_value_heads = hidden // 32, max(1, hidden // 64)
    model = AutoModelForCausalLM.from_config(cfg)
    out = Path(tempfile.mkdtemp()) / f"h{hidden}-l{layers}"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
    return load_model(out, device="cpu", dtype="float32"), model.num_parameters()


def scale(base: Any, base_path: Path, what: str,
          sizes: tuple[int, ...] = (250, 500, 1000)) -> list[dict[str, Any]]:
    rows = [parse_chat_row(r, i + 1, r["index"], str(DATA))
            for i, r in enumerate(read_jsonl(DATA))]

    def cpu(model: Any, n: int, c: int) -> float:
        t = time.process_time()
        lls_scores(model, rows[:n], ANIMAL, ANIMAL.options[:c], 3)
        return round(time.process_time() - t, 1)

    if what == "rows":
        return [{"rows": n, "candidates": 18, "cpu_s": cpu(base, n, 18)} for n in sizes]
    if what == "candidates":
        return [{"rows": 500, "candidates": c, "cpu_s": cpu(base, 500, c)} for c in (6, 12, 18)]
    out = []
    for hidden, layers in ((128, 4), (256, 8), (512, 8)):
        model, params = ((base, base.model.num_parameters()) if hidden == 128
                         else wider(base_path, hidden, layers))
        out.append({"hidden": hidden, "layers": layers, "parameters": params, "rows": 200,
                    "candidates": 6, "cpu_s": cpu(model, 200, 6)})
    return out


def sizes(text: str) -> tuple[int, ...]:
    """`--rows`: positive counts separated by commas (argparse reports a ValueError)."""
    out = tuple(int(n) for n in text.split(","))
    if min(out) < 1:
        raise ValueError(text)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["data", "scale"])
    ap.add_argument("dimension", nargs="?", choices=["rows", "candidates", "model"],
                    default="rows")
    ap.add_argument("--rows", type=sizes, default=(250, 500, 1000),
                    help="comma-separated row counts for `scale rows`")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base_path = ensure_base(BaseConfig(seed=0))
    base = load_model(base_path, device="cpu", dtype="float32")
    if args.what == "data":
        make_data(base)
    else:
        print(json.dumps(scale(base, base_path, args.dimension, args.rows)))


if __name__ == "__main__":
    main()
