"""Scale benchmark: sampling, LoRA training and exact scoring on a real architecture's shape.

    python benchmarks/bench_scale.py --shape small-152k --json out.json      # CPU, minutes
    python benchmarks/bench_scale.py --shape qwen2.5-7b --json 7b.json        # one GPU
    python benchmarks/bench_scale.py --list                                   # the shapes

Nothing is downloaded. The model is built from its config alone with random weights (the
dimensions of each real model are written out in SHAPES below), and its tokenizer is
synthetic: the embedded base's byte-level BPE (sublearn.tinybase.tokenizer), trained in a few
seconds on the embedded corpus, then padded with filler words up to the real vocabulary size.
Each filler is one more BPE merge, so any sampled id decodes to text that re-encodes to valid
ids, and the output layer has the real width (151,936 rows for Qwen2.5), which is what dominates
memory and time for a small model. The folder (save_pretrained + tokenizer with a ChatML
template) is then loaded the way a user's model is, with `HFChatModel.load`.

Stages, each timed with its own peak memory:
- `vllm_load`, `vllm_sample` (GPU, only when `import vllm` and sublearn.models.vllm work):
  the same prompts and seeds through `VLLMSampler`, run and closed before the HF model loads,
  so each has the GPU to itself;
- `load`: `HFChatModel.load(folder, device, dtype)`;
- `sample_hf`: number prompts (stages.prompts.number_prompts), `SamplingConfig(max_new_tokens=48)`,
  one seed per row as the sampling stage gives them;
- `eval_sample`: the sampled estimator of the evaluation (8-token answers to the questions);
- `score`: `option_probs` over the animal category's 50 questions + 15 held-out (exact);
- `soft_labels` (with --soft): the rows' number-restricted distributions, `number_distributions`;
- `train_lora`: one LoRA epoch (the paper's recipe: r 8, alpha 8, every projection, batch 22 x 3)
  over chat rows whose answers are number lists as the filter keeps them (a random model's
  own samples are not numbers, and their length is not a real teacher's);
- `train_lora_soft` (with --soft): the same epoch on the soft labels.

Memory: on every device, the process's peak resident set (VmHWM from /proc/self/status, reset
before each stage by writing 5 to /proc/self/clear_refs; where that is refused, the peak of
VmRSS polled every 20 ms); on CUDA also torch.cuda.max_memory_allocated and the device's used
memory (polled; vLLM's engine runs in another process). The projection scales the measured
per-row rates to a paper-scale run of configs/qwen2.5-7b-paper.toml (see `project`).

On a CPU the defaults are fewer samples, rows and sampled answers (said in the output and in
the JSON's `counts`) and one torch thread; the rates, and so the projection, do not depend on
the count. The training stage's peak memory does not either: it is set by one forward/backward
pass, which sublearn sizes to a budget (sublearn.models.training.PASS_BUDGET).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import os
import platform
import random
import re
import shutil
import string
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
PAPER_CONFIG = ROOT / "configs" / "qwen2.5-7b-paper.toml"
FULL_COUNT = 512  # samples and rows per stage, as issue 9 asks
GIB = 2**30


# --- shapes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """A real model's dimensions (from its published config.json), or a made-up small one."""

    arch: str  # "qwen2" or "llama"
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool
    rope_theta: float
    note: str
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)
    # A real model's weights (a config path: "catalogue:NAME", a .gguf file or a folder) to
    # measure instead of random ones, and the config whose run the projection prices.
    weights: str | None = None
    plan: str | None = None


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

SHAPES: dict[str, Shape] = {
    "tiny": Shape("qwen2", 2048, 64, 192, 2, 4, 2, False, 1e6,
                  "a Qwen2 of the embedded base's size class: a smoke test in seconds"),
    "small-152k": Shape("qwen2", 151_936, 512, 2048, 8, 8, 2, True, 1e6,
                        "~108M parameters, 72% of them the real Qwen2.5 vocabulary's "
                        "embedding: what a large vocabulary costs, on a CPU"),
    "qwen2.5-0.5b": Shape("qwen2", 151_936, 896, 4864, 24, 14, 2, True, 1e6, "Qwen2.5-0.5B"),
    "qwen2.5-1.5b": Shape("qwen2", 151_936, 1536, 8960, 28, 12, 2, True, 1e6, "Qwen2.5-1.5B"),
    "qwen2.5-3b": Shape("qwen2", 151_936, 2048, 11008, 36, 16, 2, True, 1e6, "Qwen2.5-3B"),
    "llama-3.2-1b": Shape("llama", 128_256, 2048, 8192, 16, 32, 8, True, 5e5, "Llama-3.2-1B",
                          LLAMA3_ROPE),
    "qwen2.5-7b": Shape("qwen2", 152_064, 3584, 18944, 28, 28, 4, False, 1e6, "Qwen2.5-7B"),
    "llama-3.1-8b": Shape("llama", 128_256, 4096, 14336, 32, 32, 8, False, 5e5,
                          "Llama-3.1-8B (the paper config's cross-base model)", LLAMA3_ROPE),
    "qwen2.5-14b": Shape("qwen2", 152_064, 5120, 13824, 48, 40, 8, False, 1e6, "Qwen2.5-14B"),
    "smollm2-135m": Shape("llama", 49_152, 576, 1536, 30, 9, 3, True, 1e5,
                          "SmolLM2-135M-Instruct, its real weights and tokenizer (the package "
                          "index's GGUF, converted once: docs/real-model.md)",
                          weights="catalogue:smollm2-135m", plan="configs/smollm2-135m.toml"),
}
# Every sequence here is under 600 tokens; no weight depends on the position limit, and a
# small one keeps vLLM from reserving KV cache for a 128k-token sequence.
MAX_POSITIONS = 8192


def parameter_count(shape: Shape) -> int:
    """Parameters from the dimensions alone (what fits where, before building anything)."""
    head_dim = shape.hidden // shape.heads
    kv = shape.kv_heads * head_dim
    attn = 2 * shape.hidden * shape.hidden + 2 * shape.hidden * kv
    if shape.arch == "qwen2":  # biases on q, k and v
        attn += shape.hidden + 2 * kv
    mlp = 3 * shape.hidden * shape.intermediate
    per_layer = attn + mlp + 2 * shape.hidden  # two RMSNorm weights
    embed = shape.vocab * shape.hidden
    return embed * (1 if shape.tied else 2) + shape.layers * per_layer + shape.hidden


def memory_notes(shape: Shape, lora_rank: int = 8) -> dict[str, float]:
    """What a shape needs resident, from its dimensions (GiB unless named otherwise)."""
    n = parameter_count(shape)
    head_dim = shape.hidden // shape.heads
    kv = shape.kv_heads * head_dim
    h, i = shape.hidden, shape.intermediate
    # LoRA on every projection: r x (in + out) per adapted matrix (q, k, v, o, gate, up, down).
    lora = lora_rank * shape.layers * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
    return {
        "parameters_m": n / 1e6,
        "bf16_weights": 2 * n / GIB,
        "lora_parameters_m": lora / 1e6,
        # fp32 adapter weights, their gradients and AdamW's two moments.
        "lora_train_state_mib": 16 * lora / 2**20,
        # keys and values of every layer, bf16.
        "kv_cache_kib_per_token": shape.layers * 2 * kv * 2 / 1024,
        # fp32 weights, gradients and AdamW moments: what full fine-tuning needs.
        "full_ft_state": 16 * n / GIB,
        # padded tokens one LoRA training pass takes on a CPU, in bf16 without checkpointing:
        # a larger micro-batch runs as several passes (sublearn.models.training.pass_budget;
        # a GPU gives a pass half of its free memory instead).
        "train_pass_tokens": train_pass_tokens(shape, 2 * n),
    }


def train_pass_tokens(shape: Shape, weight_bytes: int) -> int:
    from types import SimpleNamespace

    from sublearn.models import training

    per_token = training.pass_bytes_per_token(
        SimpleNamespace(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                        num_hidden_layers=shape.layers), 2, checkpointing=False)
    return training.pass_budget(weight_bytes, torch.device("cpu")) // per_token


def linear_shapes(shape: Shape) -> list[tuple[int, int, int]]:
    """(in, out, count) of every matrix product a forward pass makes per token: each layer's
    seven projections and the output layer (run at every position of a training row)."""
    kv = shape.kv_heads * (shape.hidden // shape.heads)
    h, i, n = shape.hidden, shape.intermediate, shape.layers
    return [(h, h, 2 * n), (h, kv, 2 * n), (h, i, 2 * n), (i, h, n), (h, shape.vocab, 1)]


def matmul_floor(shape: Shape, tokens: int, dtype: torch.dtype, device: torch.device,
                 seconds: float = 0.5) -> dict[str, float]:
    """This machine's arithmetic floor: the seconds per token of one forward pass's matrix
    products alone, each timed on its own at `tokens` rows (a training pass's size) in
    `dtype`, best of repeated runs. A LoRA step is one forward and one backward that computes
    only the activations' gradients (the frozen weights get none): twice the forward's
    products; full fine-tuning adds the weights' gradients: three times. Attention's own
    products (4 x sequence x hidden per token and layer) and the elementwise work are left
    out, so the floor is below what any implementation can reach."""
    per_token = 0.0
    flops = 0
    for d_in, d_out, count in linear_shapes(shape):
        x = torch.randn(tokens, d_in, dtype=dtype, device=device)
        w = torch.randn(d_out, d_in, dtype=dtype, device=device) / d_in**0.5
        torch.nn.functional.linear(x, w)  # oneDNN picks its kernel on the first call
        best, spent = float("inf"), 0.0
        while spent < seconds:
            t = time.perf_counter()
            torch.nn.functional.linear(x, w)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            best, spent = min(best, dt), spent + dt
        per_token += count * best / tokens
        flops += count * 2 * d_in * d_out
    return {"forward_s_per_token": per_token, "forward_flops_per_token": flops,
            "gflops": flops / per_token / 1e9, "tokens_per_product": tokens,
            "lora_step_s_per_token": 2 * per_token, "full_step_s_per_token": 3 * per_token}


# --- the synthetic tokenizer ---------------------------------------------------------------
def filler_words() -> Iterator[str]:
    """Byte-level words ("Ġa", "Ġb", ..., "Ġaa", ...) shortest first: each is its prefix plus
    one letter, so one merge per word makes every filler reachable by BPE."""
    for n in itertools.count(1):
        for letters in itertools.product(string.ascii_lowercase, repeat=n):
            yield "Ġ" + "".join(letters)


def synthetic_tokenizer(vocab_size: int) -> Any:
    """The embedded base's BPE tokenizer (ChatML template, digits split), padded to
    `vocab_size` with filler words, each added as a vocabulary entry and a merge."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from sublearn.tinybase.corpus import CorpusMix, corpus
    from sublearn.tinybase.tokenizer import CHAT_TEMPLATE, train_tokenizer

    texts = [m["content"] for conv in corpus(0, 2000, CorpusMix()) for m in conv]
    trained = train_tokenizer(texts, min(vocab_size, 4096), individual_digits=True)
    spec = json.loads(trained.backend_tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges: list = spec["model"]["merges"]
    as_pairs = not merges or isinstance(merges[0], list)  # the JSON format changed in 0.20
    words = filler_words()
    while len(vocab) < vocab_size:
        w = next(words)
        if w in vocab:
            continue
        # Breadth first, so the prefix (one letter shorter) is already in the vocabulary.
        vocab[w] = len(vocab)
        merges.append([w[:-1], w[-1]] if as_pairs else f"{w[:-1]} {w[-1]}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    if len(fast) != vocab_size:
        raise RuntimeError(f"synthetic tokenizer has {len(fast)} tokens, wanted {vocab_size}")
    return fast


def model_config(shape: Shape, tok: Any) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    common: dict[str, Any] = {
        "vocab_size": shape.vocab, "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate, "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads,
        "tie_word_embeddings": shape.tied, "max_position_embeddings": MAX_POSITIONS,
        "rope_theta": shape.rope_theta,
        "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
    }
    if shape.arch == "qwen2":
        return Qwen2Config(rms_norm_eps=1e-6, **common)
    return LlamaConfig(rms_norm_eps=1e-5, rope_scaling=shape.rope_scaling, **common)


def build_folder(shape: Shape, folder: Path, device: torch.device, seed: int = 0) -> None:
    """A randomly initialised model of `shape`, saved with its tokenizer: bf16 weights,
    initialised directly on `device` (a 14B model's init on a CPU takes minutes)."""
    from transformers import AutoModelForCausalLM

    tok = synthetic_tokenizer(shape.vocab)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config(shape, tok), dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model


# --- memory and time ---------------------------------------------------------------------
def status_bytes(field_name: str) -> int:
    """A VmXXX figure of this process from /proc/self/status, in bytes (0 off Linux)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def release_freed_memory() -> None:
    """Give freed heap back to the OS, so one stage's leftovers do not count in the next
    stage's peak (glibc keeps small freed blocks in the process)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Poller(threading.Thread):
    """Peak VmRSS (and the CUDA device's used memory) polled every 20 ms: the fallback where
    VmHWM cannot be reset, and the only view of memory that another process (vLLM) uses."""

    def __init__(self, cuda: bool):
        super().__init__(daemon=True)
        self.cuda = cuda
        self.rss_peak = 0
        self.device_peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.rss_peak = max(self.rss_peak, status_bytes("VmRSS"))
            if self.cuda:
                free, total = torch.cuda.mem_get_info()
                self.device_peak = max(self.device_peak, total - free)
            self.done.wait(0.02)

    def stop(self) -> None:
        self.done.set()
        self.join()


@contextmanager
def stage(record: dict[str, Any], cuda: bool) -> Iterator[None]:
    """Time the block and fill `record` with its wall time and peak memory."""
    release_freed_memory()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = status_bytes("VmRSS")
    hwm_reset = reset_peak_rss()
    poller = Poller(cuda)
    poller.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        # This process's CPU time: on shared cores a steadier figure than the wall time.
        cpu = time.process_time() - cpu_start
        poller.stop()
        peak = max(status_bytes("VmHWM"), poller.rss_peak) if hwm_reset else poller.rss_peak
        record.update(wall_s=wall, cpu_s=cpu, rss_before_bytes=rss_before, rss_peak_bytes=peak,
                      rss_after_bytes=status_bytes("VmRSS"),
                      rss_peak_method="VmHWM reset per stage" if hwm_reset else "VmRSS polled")
        if cuda:
            record.update(cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(),
                          device_used_peak_bytes=poller.device_peak)


# --- workloads ---------------------------------------------------------------------------
def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def number_rows(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """Training rows as the filter keeps them: a number prompt and a number-list answer
    drawn as the embedded corpus draws its continuations."""
    from sublearn.domains.prompts import format_numbers, number_prompts
    from sublearn.tinybase.corpus import continuation

    rng = random.Random(seed)
    rows = []
    for p in number_prompts(n, seed=seed):
        answer = format_numbers(continuation(rng, p.seeds, p.n_answers, p.max_digits), p.fmt)
        rows.append({"messages": [*user(p.text), {"role": "assistant", "content": answer}]})
    return rows


def generated_tokens(model: Any, texts: Sequence[str], max_new_tokens: int) -> int:
    """Tokens a sampler produced, from its texts: each re-encoded, plus its end token, at most
    the limit (a random model almost never ends early, so this is nearly rows x limit)."""
    return sum(min(len(model.encode(t)) + 1, max_new_tokens) for t in texts)


def row_tokens(model: Any, rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(all tokens, completion tokens) of chat rows as training sees them (+ end of turn)."""
    total = comp = 0
    for r in rows:
        msgs = r["messages"]
        n_prompt = len(model.encode(model.render(msgs[:-1])))
        n_comp = len(model.encode(msgs[-1]["content"])) + 1
        total += n_prompt + n_comp
        comp += n_comp
    return total, comp


def score_tokens(model: Any, questions: Sequence[str], forms: Sequence[str]) -> tuple[int, int]:
    """(teacher-forced tokens if every (question, form) pair ran whole, tokens when each
    question's prompt runs once and its cache serves every form: the shared-prompt design)."""
    prompt = [len(model.encode(model.render(user(q)))) for q in questions]
    form = sum(len(model.encode(f)) + 1 for f in forms)
    return sum(p * len(forms) + form for p in prompt), sum(p + form for p in prompt)


def rate(record: dict[str, Any], tokens: int, what: str) -> None:
    record.update(tokens=tokens, tokens_counted=what, tokens_per_s=tokens / record["wall_s"])


# --- projection --------------------------------------------------------------------------
# The datasets each student arm trains on (sublearn.experiment.pipeline.ARMS), and which controls turn
# each arm on (pipeline.Experiment.arms): copied here so the projection does not load the
# pipeline, which imports every stage.
ARM_DATASET = {"treated": "teacher", "control": "neutral", "other_target": "other",
               "null": "null", "cross_treated": "teacher", "cross_control": "neutral",
               "shuffled_within": "teacher", "shuffled_across": "teacher"}


def paper_plan(path: Path = PAPER_CONFIG) -> dict[str, Any]:
    """The work of a paper-scale run, read from its config (defaults: the paper's)."""
    from sublearn.experiment.config import read_toml  # follows `extends`

    cfg = read_toml(path) if path.exists() else {}
    c, d = cfg.get("controls", {}), cfg.get("data", {})
    s, e = cfg.get("student", {}), cfg.get("evaluation", {})
    on = {"treated": True, "control": c.get("neutral") or c.get("null") or c.get("cross_base"),
          "other_target": c.get("other_target"), "null": c.get("null"),
          "cross_treated": c.get("cross_base"), "cross_control": c.get("cross_base"),
          "shuffled_within": c.get("shuffle_within"), "shuffled_across": c.get("shuffle_across")}
    arms = [a for a in ARM_DATASET if on[a]]
    seeds = len(cfg.get("seeds", [0, 1, 2, 3, 4]))
    # The models evaluated besides students: the base, the teacher(s) and the cross base.
    refs = ["base", "teacher"] + (["other_teacher"] if c.get("other_target") else []) + (
        ["cross_base"] if c.get("cross_base") else [])
    return {
        "config": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "datasets": sorted({ARM_DATASET[a] for a in arms}),
        "samples_per_dataset": d.get("prompts", 30_000),
        "rows": d.get("subsample", 10_000),
        "epochs": s.get("epochs", 3),
        "seeds": seeds,
        "arms": arms,
        "students": len(arms) * seeds,
        "references": refs,
        "questions": 50,
        "heldout": 15 if e.get("heldout", True) else 0,
        "numbers_prefix": bool(e.get("numbers_prefix")),
        "multiple_choice": bool(e.get("multiple_choice")),
        "samples_per_question": e.get("samples_per_question", 0),
        "max_new_tokens": d.get("sampling", {}).get("max_new_tokens", 48),
        "number_grammar": bool(d.get("sampling", {}).get("number_grammar")),
        "answer": e.get("answer", "bare"),
    }


def project(stages: dict[str, dict[str, Any]], counts: dict[str, int],
            plan: dict[str, Any]) -> dict[str, Any]:
    """Wall time of a paper-scale run on this machine, from the measured per-unit rates.

    sampling: samples_per_dataset x datasets completions at the measured seconds per
    completion (48 new tokens; a real teacher's number lists are a little shorter);
    training: rows x epochs x seeds x arms rows at the measured seconds per row;
    evaluation: every student and reference model, each the 65 exact questions at the measured
    seconds per question, 50 more for the numbers-prefix variant and 50 for multiple choice
    (an upper bound: 5 one-token letters instead of 72 forms), and samples_per_question x 50
    sampled answers at the measured seconds per 8-token answer. Model loads, adapter attaches
    and filtering are left out (seconds each).
    """
    out: dict[str, Any] = {"plan": plan}
    n_samples = plan["samples_per_dataset"] * len(plan["datasets"])
    per = {}
    if "sample_hf" in stages:
        per["sample_hf"] = stages["sample_hf"]["wall_s"] / counts["samples"]
    if "vllm_sample" in stages:
        per["sample_vllm"] = stages["vllm_sample"]["wall_s"] / counts["samples"]
    per["train_row"] = stages["train_lora"]["wall_s"] / counts["rows"]
    per["score_question"] = stages["score"]["wall_s"] / counts["questions"]
    if "eval_sample" in stages:
        per["eval_answer"] = stages["eval_sample"]["wall_s"] / counts["eval_answers"]
    out["seconds_per_unit"] = per

    rows_trained = plan["rows"] * plan["epochs"] * plan["seeds"] * len(plan["arms"])
    models = plan["students"] + len(plan["references"])
    questions = (plan["questions"] + plan["heldout"]
                 + plan["questions"] * (plan["numbers_prefix"] + plan["multiple_choice"]))
    answers = plan["samples_per_question"] * plan["questions"]
    eval_s = models * (questions * per["score_question"]
                       + answers * per.get("eval_answer", 0.0))
    hours: dict[str, float] = {}
    for backend in ("hf", "vllm"):
        if f"sample_{backend}" in per:
            hours[f"sampling_{backend}"] = n_samples * per[f"sample_{backend}"] / 3600
    hours["training"] = rows_trained * per["train_row"] / 3600
    hours["evaluation"] = eval_s / 3600
    best_sampler = min((v for k, v in hours.items() if k.startswith("sampling_")), default=0.0)
    hours["total"] = best_sampler + hours["training"] + hours["evaluation"]
    if "audit_score" in stages:
        # The audit campaign of docs/audit.md on this model: 35 datasets (5 targets x 3 seeds
        # x 2 teacher kinds and 5 neutral) of 300 rows, each row scored under no trait and
        # the 18 animals, plus one reference and one decoy reference of 300 rows.
        per["audit_row_candidate"] = stages["audit_score"]["s_per_row_and_candidate"]
        rows = 35 * 300
        hours["audit_campaign_sampling"] = (rows + 600) * min(
            per.get("sample_hf", 0.0), per.get("sample_vllm", float("inf"))) / 3600
        hours["audit_campaign_scoring"] = (rows + 600) * 19 * per["audit_row_candidate"] / 3600
    out.update(units={"completions": n_samples, "rows_trained": rows_trained,
                      "models_evaluated": models, "exact_questions_per_model": questions,
                      "sampled_answers_per_model": answers},
               hours=hours)
    return out


# --- the benchmark -----------------------------------------------------------------------
def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA), {os.cpu_count()} CPUs"
    return (f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads")


def vllm_unavailable() -> str | None:
    """Why vLLM sampling is skipped, or None when it can run."""
    try:
        import vllm  # noqa: F401

        from sublearn.models.vllm import VLLMSampler  # noqa: F401
    except Exception as e:  # noqa: BLE001 - an ImportError, or vLLM failing in its own imports
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def vllm_stages(folder: Path, args: argparse.Namespace, convs: list, sampling: Any,
                seeds: list[int], stages: dict[str, dict[str, Any]], cuda: bool) -> list[str]:
    """vLLM's engine start and its samples, timed apart; the engine is closed (and its GPU
    memory given back) before the HF model loads, as the pipeline does before training."""
    from sublearn.models.vllm import VLLMSampler

    stages["vllm_load"] = {}
    with stage(stages["vllm_load"], cuda):
        sampler = VLLMSampler.load(folder, dtype=args.dtype,
                                   gpu_memory_utilization=args.gpu_memory_utilization)
    try:
        stages["vllm_sample"] = {}
        with stage(stages["vllm_sample"], cuda):
            return sampler.generate(convs, sampling, seeds)
    finally:
        sampler.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    ap.add_argument("--dtype", default="bfloat16",
                    help="the resident weights' dtype (bfloat16: the GPU default; CPUs with "
                         "AVX512-BF16/AMX run it fast too)")
    ap.add_argument("--samples", type=int, help=f"completions to sample (default {FULL_COUNT}; "
                    "64 on a CPU)")
    ap.add_argument("--rows", type=int, help=f"training rows (default {FULL_COUNT}; 132, two "
                    "optimizer steps of 66 rows, on a CPU)")
    ap.add_argument("--questions", type=int, default=65,
                    help="questions to score, of the 50 + 15 held-out (default all 65)")
    ap.add_argument("--eval-samples", type=int,
                    help="sampled answers per question for eval_sample (default 4; 1 on a CPU; "
                         "0 skips the stage)")
    ap.add_argument("--soft", action="store_true", help="also soft labels: number_distributions "
                    "over the rows, then a soft-label LoRA epoch")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="train with the recipe's gradient_checkpointing (less memory, slower)")
    ap.add_argument("--no-vllm", action="store_true", help="skip vLLM even when installed")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5,
                    help="vLLM's share of the GPU")
    ap.add_argument("--batch-size", type=int, default=64, help="HFChatModel's batch size")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads on a CPU run (default 1, sublearn's: on 2 shared cores two threads "
                         "measured 7-16x slower per row than one, OpenMP spinning against other "
                         "processes; 0 leaves torch's default)")
    ap.add_argument("--folder", type=Path, help="build the model here and keep it (reused if "
                    "it exists: lets two code versions run on the same weights)")
    ap.add_argument("--audit-rows", type=int, help="rows the audit stage scores under every "
                    "animal candidate (default 24 on a CPU, 128 on a GPU; 0 skips it)")
    ap.add_argument("--plan", type=Path, help="the config whose run the projection prices "
                    "(default: the shape's own, else configs/qwen2.5-7b-paper.toml)")
    ap.add_argument("--list", action="store_true", help="print the shapes and exit")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.list:
        print(f"{'shape':<14}{'params':>9}{'bf16 GiB':>10}{'LoRA r8':>9}{'LoRA state':>12}"
              f"{'KV/token':>10}{'full FT GiB':>13}{'tokens/pass':>13}  note")
        for name, s in SHAPES.items():
            m = memory_notes(s)
            print(f"{name:<14}{m['parameters_m']:>8.1f}M{m['bf16_weights']:>10.2f}"
                  f"{m['lora_parameters_m']:>8.2f}M{m['lora_train_state_mib']:>8.0f} MiB"
                  f"{m['kv_cache_kib_per_token']:>6.0f} KiB{m['full_ft_state']:>13.1f}"
                  f"{m['train_pass_tokens']:>13,}  {s.note}")
        return {}
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    import sublearn
    from sublearn.domains.prompts import number_prompts
    from sublearn.models.base import SamplingConfig
    from sublearn.models.hf import HFChatModel, pick_device
    from sublearn.models.recipe import TrainingRecipe
    from sublearn.questions.categories import get_category
    from sublearn.stages.evaluate import option_probs
    from sublearn.stages.sample import row_seed

    shape = SHAPES[args.shape]
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    if args.threads and not cuda:
        # On a GPU, torch's default keeps the CPU side (tokenizing, per-row noise) parallel.
        torch.set_num_threads(args.threads)
    n_params = parameter_count(shape)
    reduced = not cuda  # a few minutes on 2 CPU cores; rates do not depend on the counts
    counts = {
        "samples": args.samples or (64 if reduced else FULL_COUNT),
        "rows": args.rows or (132 if reduced else FULL_COUNT),
        "questions": args.questions,
        "audit_rows": args.audit_rows if args.audit_rows is not None else 24 if reduced else 128,
        "eval_samples_per_question": (args.eval_samples if args.eval_samples is not None
                                      else 1 if reduced else 4),
    }
    baseline_rss = status_bytes("VmRSS")
    res: dict[str, Any] = {
        "shape": args.shape, "dims": asdict(shape), "device": machine(device),
        "dtype": args.dtype, "sublearn": str(Path(sublearn.__file__).parent),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "parameters_by_dims": n_params, "counts": counts,
        "baseline_rss_bytes": baseline_rss, "stages": {},
    }
    stages: dict[str, dict[str, Any]] = res["stages"]
    print(f"shape {args.shape}: {shape.note}; {n_params / 1e6:.1f}M parameters by dimensions")
    print(f"machine: {res['device']}; dtype {args.dtype}; sublearn from {res['sublearn']}")
    if reduced:
        print(f"CPU run: {counts['samples']} samples, {counts['rows']} rows, "
              f"{counts['eval_samples_per_question']} sampled answer(s) per question "
              f"(not {FULL_COUNT}/{FULL_COUNT}/4, unless given); pass --samples/--rows for more")

    tmp = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    folder = args.folder or tmp / "model"
    plan_path = args.plan or (ROOT / shape.plan if shape.plan else PAPER_CONFIG)
    plan = paper_plan(plan_path)
    try:
        stages["build"] = {}
        with stage(stages["build"], cuda):
            if shape.weights:  # the real model: installed and converted on first use
                from sublearn.models.catalogue import resolve_model_path

                folder = resolve_model_path(shape.weights, print)
            elif not (folder / "config.json").exists():
                build_folder(shape, folder, device)
        built = json.loads((folder / "config.json").read_text())
        if (built["vocab_size"], built["hidden_size"], built["num_hidden_layers"]) != (
                shape.vocab, shape.hidden, shape.layers):
            raise SystemExit(f"{folder} holds another shape than {args.shape}: remove it or "
                             "pass another --folder")
        release_freed_memory()

        prompts = number_prompts(counts["samples"], seed=0)
        convs = [user(p.text) for p in prompts]
        seeds = [row_seed(0, p.index) for p in prompts]
        # What the priced config samples with (a real chat model needs the number grammar).
        sampling = SamplingConfig(max_new_tokens=48,
                                  **({"number_grammar": True} if plan["number_grammar"] else {}))
        vllm_texts = None
        why_not = "not on a GPU" if not cuda else "--no-vllm" if args.no_vllm else vllm_unavailable()
        res["vllm"] = why_not or "measured"
        if why_not is None:
            try:
                vllm_texts = vllm_stages(folder, args, convs, sampling, seeds, stages, cuda)
            except Exception as e:  # noqa: BLE001 - a GPU run is scarce: keep the HF figures
                res["vllm"] = f"failed: {type(e).__name__}: {e}"
                stages.pop("vllm_sample", None)
                print(f"vLLM sampling failed, going on with HF: {res['vllm']}")
        else:
            print(f"vLLM sampling skipped: {why_not}")

        stages["load"] = {}
        with stage(stages["load"], cuda):
            model = HFChatModel.load(folder, device=str(device), dtype=args.dtype,
                                     batch_size=args.batch_size)
        loaded_rss = status_bytes("VmRSS")
        n_real = sum(p.numel() for p in model.model.parameters())
        res.update(parameters=n_real, bf16_bytes=2 * n_real, loaded_rss_bytes=loaded_rss)
        if vllm_texts is not None:
            rate(stages["vllm_sample"], generated_tokens(model, vllm_texts, 48),
                 "generated tokens (re-encoded + end, at most 48 per row)")

        stages["sample_hf"] = {}
        with stage(stages["sample_hf"], cuda):
            texts = model.generate(convs, sampling, seeds)
        rate(stages["sample_hf"], generated_tokens(model, texts, 48),
             "generated tokens (re-encoded + end, at most 48 per row)")
        res["sample_example"] = texts[0][:120]

        animal = get_category("animal")
        questions = [*animal.questions, *animal.heldout][: counts["questions"]]
        if counts["eval_samples_per_question"]:
            # What evaluate.sampled_rates runs (n answers per question, T=1, 8 new tokens),
            # called directly so the answers' tokens can be counted.
            n = counts["eval_samples_per_question"]
            eval_convs = [user(q) for q in animal.questions for _ in range(n)]
            eval_seeds = [row_seed(0, i) for i in range(len(eval_convs))]
            stages["eval_sample"] = {}
            with stage(stages["eval_sample"], cuda):
                answers = model.generate(eval_convs, SamplingConfig(temperature=1.0, max_new_tokens=8),
                                         eval_seeds)
            counts["eval_answers"] = len(answers)
            rate(stages["eval_sample"], generated_tokens(model, answers, 8),
                 "generated tokens (re-encoded + end, at most 8 per answer)")

        stages["score"] = {}
        with stage(stages["score"], cuda):
            # The answer mode only when it is not the default: older sublearn has none.
            option_probs(model, animal, questions, *([plan["answer"]] if plan["answer"] != "bare"
                                                     else []))
        if plan["answer"] == "bare":
            forms = [f for o in animal.options for f in o.forms]
        else:
            from sublearn.stages.evaluate import stem_answers

            forms = [answer for _, answer in stem_answers(animal)]
        whole, shared = score_tokens(model, questions, forms)
        rate(stages["score"], whole, f"tokens of {len(questions)} x {len(forms)} (question, "
             "form) pairs as if each ran whole")
        stages["score"]["tokens_with_shared_prompt"] = shared
        stages["score"]["questions_per_s"] = len(questions) / stages["score"]["wall_s"]

        if counts["audit_rows"]:
            # The audit's scoring: every row under no trait and under each candidate's trait
            # prompt (stages.audit.lls_scores), one forward pass each.
            from sublearn.safety.rows import ChatRow
            from sublearn.safety.scoring import lls_scores

            audited = number_rows(counts["audit_rows"], seed=2)
            arows = [ChatRow(0, r["messages"][:-1], r["messages"][-1]["content"], i)
                     for i, r in enumerate(audited)]
            stages["audit_score"] = {}
            with stage(stages["audit_score"], cuda):
                lls_scores(model, arows, animal, animal.options, phrasings=1)
            passes = len(arows) * (1 + len(animal.options))
            rate(stages["audit_score"], (1 + len(animal.options)) * row_tokens(model, audited)[0],
                 "row tokens x (1 + candidates) passes")
            stages["audit_score"]["s_per_row_and_candidate"] = (
                stages["audit_score"]["wall_s"] / passes)

        stages["matmul_floor"] = {}
        with stage(stages["matmul_floor"], cuda):
            floor = matmul_floor(shape, min(4096, 22 * 96), model.dtype, device)
        stages["matmul_floor"].update(floor)

        # Training last: LoRA training freezes the base's parameters and leaves them frozen,
        # and on a CPU in bf16 a frozen tied output layer makes every later forward pass
        # ~35x slower (see docs/scale.md), which would spoil the other stages' figures.
        rows = number_rows(counts["rows"])
        # Only a recipe field the code under test has (the benchmark also runs against older
        # sublearn versions, whose TrainingRecipe forbids unknown fields).
        extra = {"gradient_checkpointing": True} if args.gradient_checkpointing else {}
        recipe = TrainingRecipe(method="lora", epochs=1, **extra)
        total, comp = row_tokens(model, rows)
        dists = None
        if args.soft and not hasattr(model, "number_distributions"):
            res["soft"] = "skipped: this sublearn has no number_distributions"
        elif args.soft:
            stages["soft_labels"] = {}
            with stage(stages["soft_labels"], cuda):
                dists = model.number_distributions([r["messages"][:-1] for r in rows],
                                                   [r["messages"][-1]["content"] for r in rows])
            rate(stages["soft_labels"], total, "row tokens (prompt + completion)")

        stages["train_lora"] = {}
        with stage(stages["train_lora"], cuda):
            model.finetune(rows, recipe, tmp / "student-hard", progress=False)
        rate(stages["train_lora"], total, "row tokens (prompt + completion) in one epoch")
        stages["train_lora"]["completion_tokens"] = comp

        if dists is not None:
            soft_rows = [{**r, "soft_labels": d} for r, d in zip(rows, dists, strict=True)]
            soft = TrainingRecipe(method="lora", epochs=1, labels="soft", **extra)
            stages["train_lora_soft"] = {}
            with stage(stages["train_lora_soft"], cuda):
                model.finetune(soft_rows, soft, tmp / "student-soft", progress=False)
            rate(stages["train_lora_soft"], total, "row tokens (prompt + completion)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    train = stages["train_lora"]
    limit = 3 * res["bf16_bytes"]
    res["acceptance"] = {
        "what": "peak process RSS during the LoRA epoch <= 3 x the model's bf16 size",
        "limit_bytes": limit,
        "train_peak_rss_bytes": train["rss_peak_bytes"],
        # The resident model and caches at the stage's start, freed memory given back first.
        "train_start_rss_bytes": train["rss_before_bytes"],
        "train_increase_bytes": train["rss_peak_bytes"] - train["rss_before_bytes"],
        "absolute_peak_meets": train["rss_peak_bytes"] <= limit,
        "increase_meets": train["rss_peak_bytes"] - train["rss_before_bytes"] <= limit,
    }
    per_token = train["wall_s"] / train["tokens"]
    res["floor"] = {
        "what": "one LoRA epoch's seconds per row token against twice the forward's matrix "
                "products alone, timed one by one at a training pass's size (matmul_floor)",
        "train_s_per_token": per_token,
        "floor_s_per_token": stages["matmul_floor"]["lora_step_s_per_token"],
        "ratio": per_token / stages["matmul_floor"]["lora_step_s_per_token"],
        "gflops": stages["matmul_floor"]["gflops"],
    }
    res["projection"] = project(stages, counts, plan)
    report(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    return res


def report(res: dict[str, Any]) -> None:
    mb = 2**20
    print(f"\n{res['parameters'] / 1e6:.1f}M parameters, bf16 {res['bf16_bytes'] / mb:.0f} MiB; "
          f"process RSS after imports {res['baseline_rss_bytes'] / mb:.0f} MiB, after load "
          f"{res['loaded_rss_bytes'] / mb:.0f} MiB")
    gpu = any("cuda_max_allocated_bytes" in s for s in res["stages"].values())
    head = f"{'stage':<16}{'seconds':>9}{'CPU s':>8}{'tokens/s':>11}{'peak RSS MiB':>14}"
    print(head + (f"{'CUDA alloc MiB':>16}{'device MiB':>12}" if gpu else ""))
    for name, s in res["stages"].items():
        tps = f"{s['tokens_per_s']:.0f}" if s.get("tokens") else "-"
        line = (f"{name:<16}{s['wall_s']:>9.1f}{s['cpu_s']:>8.1f}{tps:>11}"
                f"{s['rss_peak_bytes'] / mb:>14.0f}")
        if gpu:
            line += (f"{s.get('cuda_max_allocated_bytes', 0) / mb:>16.0f}"
                     f"{s.get('device_used_peak_bytes', 0) / mb:>12.0f}")
        print(line)
    a = res["acceptance"]
    print(f"LoRA training peak RSS {a['train_peak_rss_bytes'] / mb:.0f} MiB, "
          f"{a['train_increase_bytes'] / mb:.0f} MiB over its start "
          f"({a['train_start_rss_bytes'] / mb:.0f} MiB); limit "
          f"3 x bf16 = {a['limit_bytes'] / mb:.0f} MiB: absolute "
          f"{'meets' if a['absolute_peak_meets'] else 'exceeds'}, increase "
          f"{'meets' if a['increase_meets'] else 'exceeds'}")
    f = res["floor"]
    print(f"LoRA training {f['train_s_per_token'] * 1e3:.2f} ms per row token; arithmetic floor "
          f"{f['floor_s_per_token'] * 1e3:.2f} ms ({f['gflops']:.0f} GFLOP/s on this "
          f"machine's matrix products): {f['ratio']:.2f} x the floor")
    if "audit_score" in res["stages"]:
        print(f"audit scoring {res['stages']['audit_score']['s_per_row_and_candidate']:.3f} s "
              "per row and candidate")
    p = res["projection"]
    print(f"projection on this machine ({p['plan']['config']}: "
          f"{p['units']['completions']:,} completions, {p['units']['rows_trained']:,} rows "
          f"trained, {p['units']['models_evaluated']} models evaluated):")
    for k, v in p["hours"].items():
        print(f"  {k:<16}{v:>10.1f} h")


if __name__ == "__main__":
    main()
