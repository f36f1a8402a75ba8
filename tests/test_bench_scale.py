"""The scale benchmark end to end on its `tiny` shape: a handful of rows, seconds on a CPU."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_scale.py"


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is not a package: load the script as a module (registered first, as its
    # dataclasses look their module up while they are being defined).
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_scale", None)


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_scale")
    res = bench.main(["--shape", "tiny", "--device", "cpu", "--samples", "4", "--rows", "6",
                      "--questions", "2", "--eval-samples", "1", "--soft", "--audit-rows", "3",
                      "--folder", str(out / "model"), "--json", str(out / "out.json")])
    return res, out


def test_json_has_every_figure(tiny_run):
    res, out = tiny_run
    assert res["shape"] == "tiny"  # main also returns what it wrote
    written = json.loads((out / "out.json").read_text())
    assert written == json.loads(json.dumps(res))
    assert written["parameters"] > 0 and written["bf16_bytes"] == 2 * written["parameters"]
    # The dimensions formula the memory notes rely on agrees with the built model.
    assert written["parameters"] == written["parameters_by_dims"]
    stages = written["stages"]
    assert set(stages) >= {"build", "load", "sample_hf", "eval_sample", "score", "soft_labels",
                           "train_lora", "train_lora_soft", "audit_score", "matmul_floor"}
    for name, s in stages.items():
        assert s["wall_s"] > 0 and s["cpu_s"] > 0, name
        assert s["rss_peak_bytes"] > 0 and s["rss_peak_bytes"] >= s["rss_before_bytes"] > 0, name
        if name not in ("build", "load", "matmul_floor"):
            assert s["tokens"] > 0 and s["tokens_per_s"] > 0, name
    assert written["vllm"] == "not on a GPU"
    acc = written["acceptance"]
    assert acc["limit_bytes"] == 3 * written["bf16_bytes"]
    assert acc["train_peak_rss_bytes"] > 0 and acc["train_increase_bytes"] >= 0
    proj = written["projection"]
    assert proj["units"]["completions"] > 0 and proj["units"]["rows_trained"] > 0
    assert all(v > 0 for v in proj["seconds_per_unit"].values())
    assert all(v > 0 for v in proj["hours"].values())
    assert proj["hours"]["total"] >= proj["hours"]["training"]
    # The floor counts the matrix products alone, so no real epoch can beat it.
    floor = written["floor"]
    assert floor["gflops"] > 0 and floor["ratio"] > 1
    assert stages["audit_score"]["s_per_row_and_candidate"] > 0


def test_synthetic_tokenizer_has_the_shape_vocabulary(bench, tiny_run):
    from transformers import AutoTokenizer

    _, out = tiny_run
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert len(tok) == bench.SHAPES["tiny"].vocab
    assert tok.chat_template
    # Any sampled ids decode, and the text re-encodes to ids inside the vocabulary.
    rng = random.Random(0)
    ids = [rng.randrange(len(tok)) for _ in range(48)]
    back = tok(tok.decode(ids, skip_special_tokens=True), add_special_tokens=False)["input_ids"]
    assert back and all(0 <= i < len(tok) for i in back)
    # Fillers are BPE merges, so a filler word comes back as itself.
    filler = tok.convert_tokens_to_ids("Ġzz")
    assert tok(tok.decode([filler]), add_special_tokens=False)["input_ids"] == [filler]


def test_projection_reads_the_paper_config(bench):
    plan = bench.paper_plan()
    assert plan["samples_per_dataset"] == 30_000 and len(plan["datasets"]) == 4
    assert plan["rows"] == 10_000 and plan["epochs"] == 3 and plan["seeds"] == 5
    assert "treated" in plan["arms"]
    assert plan["students"] == len(plan["arms"]) * plan["seeds"]
