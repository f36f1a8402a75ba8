#!/usr/bin/env bash
# The GPU figures of docs/scale.md in one run: the scale benchmark at three real shapes
# (randomly initialised, nothing downloaded), HF sampling and, when `import vllm` works, vLLM
# sampling; soft labels too. About 5 minutes on one H200 without vLLM (docs/scale.md, "GPU
# figures"), the 7B shape most of it (building and saving 15 GB of weights, then loading them
# into vLLM and into transformers).
#
#   bash benchmarks/gpu_scale.sh [OUT_DIR]        # default: $OUT if set, else gpu-scale-out
#
# Writes OUT_DIR/<shape>.json and .log per shape, plus gpu.txt (the card) and vllm.txt.
# Each shape has its own time limit, so one slow shape cannot use up the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-scale-out}}"
py="${PYTHON:-python}"
mkdir -p "$out"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
"$py" -c "import vllm; print('vllm', vllm.__version__)" >"$out/vllm.txt" 2>&1 \
  || echo "vLLM is not importable here: HF sampling only (see $out/vllm.txt)"

run() {  # shape, seconds allowed, extra flags
  local shape="$1" limit="$2"
  shift 2
  echo "== $shape (at most ${limit}s)"
  timeout "$limit" "$py" benchmarks/bench_scale.py --shape "$shape" --device cuda \
    --dtype bfloat16 --json "$out/$shape.json" "$@" 2>&1 | tee "$out/$shape.log"
  echo "== $shape: exit ${PIPESTATUS[0]}"
}

# Every shape at the benchmark's GPU default, 512 samples and 512 rows, with soft labels. On a
# GPU the first optimizer steps carry one-off costs, so fewer rows overstate the per-row rate
# (measured on an H200: 0.026 s/row over 264 rows, 0.013 over 512; docs/scale.md). The three
# shapes took 267 s there in all; vLLM, when installed, gets half the card.
run qwen2.5-0.5b 120 --soft
run llama-3.2-1b 150 --soft
run qwen2.5-7b 300 --soft
ls -l "$out"
