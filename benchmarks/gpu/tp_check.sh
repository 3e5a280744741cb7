#!/usr/bin/env bash
# Tensor parallelism on two GPUs (issue "several GPUs", parts 1, 2 and 5): the all-reduce's tests and latency, the
# tensor-parallel tests of the GPU suite (tiny models against transformers and the one-GPU plan), then the
# Llama-3-8B shape (random bf16 weights) in one e2e_bench process: all resident on cuda:0, the planner's choice at
# BIGPLAN_SPLIT (every block split over both GPUs: candidate T) and the contiguous split of the same budgets, each
# decode step against the HBM floor of the larger share.
#
#   benchmarks/gpu/tp_check.sh OUT_DIR [parts...]   parts: comm, tests, ckpt, bigplan (default: all)
# Env: BIGPLAN_SPLIT (default "cuda:0=10GiB,cuda:1=10GiB": the model needs both), BIGPLAN_REPEAT (default 5),
# BIGPLAN_CKPT (default /tmp/llama-3-8b-bf16), BIGPLAN_PREFILL_BATCH (default 0: none). Run from the repo root on a
# 2-GPU machine with the bundle in .bundle/ (tools/bundle_gpu.sh //benchmarks/gpu:e2e_bench //tools:gen_checkpoint
# //tests/e2e:e2e_gpu_test //executor:tp_comm_gpu_test //benchmarks/gpu:tp_allreduce_bench).
set -uo pipefail
out="${1:?OUT_DIR}"; shift
parts=("$@"); ((${#parts[@]})) || parts=(comm tests ckpt bigplan)
has() { local p; for p in "${parts[@]}"; do [[ "$p" == "$1" ]] && return 0; done; return 1; }
mkdir -p "$out"
env=.bundle/gpu_env.sh; bin=.bundle/bin
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off (the device tool's KINDS.md)
ckpt="${BIGPLAN_CKPT:-/tmp/llama-3-8b-bf16}"
nvidia-smi --query-gpu=index,name,memory.total --format=csv | tee "$out/gpus.txt"
nvidia-smi topo -m > "$out/topo.txt" 2>&1
if has comm; then
  "$env" "$bin/tp_comm_gpu_test" 2>&1 | tee "$out/tp_comm_gpu_test.txt" | grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[=========="
  "$env" "$bin/tp_allreduce_bench" --benchmark_out="$out/tp_allreduce_bench.json" 2>&1 |
    tee "$out/tp_allreduce_bench.txt" | grep -E "BM_|Error"
fi
if has tests; then
  BIGPLAN_TINY_MODELS="${BIGPLAN_TINY_MODELS:-/tmp/bigplan-tiny-models}"
  [[ -d $BIGPLAN_TINY_MODELS/gptj ]] || python3 tests/reference/make_tiny_models.py --out-root "$BIGPLAN_TINY_MODELS" \
    --families all > /dev/null
  BIGPLAN_TINY_MODELS=$BIGPLAN_TINY_MODELS "$env" "$bin/e2e_gpu_test" --gtest_filter='*TwoGpu*' 2>&1 |
    tee "$out/e2e_gpu_test_two_gpus.txt" | grep -E "tensor parallel|two GPUs|^\[  (PASSED|FAILED) |^\[=========="
fi
if has ckpt; then BIGPLAN_CKPT=$ckpt benchmarks/gpu/compressed_check.sh "$out" ckpt; fi
if has bigplan; then
  batch=()
  [[ "${BIGPLAN_PREFILL_BATCH:-0}" != 0 ]] && batch=(--prefill-batch "$BIGPLAN_PREFILL_BATCH")
  "$env" "$bin/e2e_bench" --model "$ckpt" --gpu-budgets "" --resident-budget-gib 70 \
    --resident-split "${BIGPLAN_SPLIT:-cuda:0=10GiB,cuda:1=10GiB}" --split-stride 0 --prefill 512 \
    --repeat "${BIGPLAN_REPEAT:-5}" "${batch[@]}" --out "$out/bigplan_tp.json" 2>&1 |
    tee "$out/bigplan_tp.txt" | grep -E "^ |floors|=="
fi
