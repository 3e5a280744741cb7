#!/usr/bin/env bash
# Two GPUs (issue "several GPUs"), the Llama-3-8B shape (random bf16 weights), in one e2e_bench process: all
# resident on cuda:0, and split over cuda:0 and cuda:1 (each budget 16 GiB), decode steps replayed from CUDA graphs
# (one per device segment); streamed at cuda:0=8GiB (one GPU), and at cuda:0=4GiB,cuda:1=4GiB (the planner's choice:
# striped, both links streaming); then, in a second process, the same 4+4 GiB budgets planned without the striped
# candidate (every streamed layer over one link: what the planner chose before); then the split tests of the GPU suite.
# The resident configurations also time a batch-8 prefill of 512-token rows, unpipelined and in micro-batches (the
# split one planned for batch 8 deals layers to the GPUs in groups: candidate I; also measured contiguous), and part
# "accelerate" times the same prefill with transformers + Accelerate's device_map="balanced" over the two GPUs and
# with the whole model on one GPU.
#
#   benchmarks/gpu/multi_gpu_check.sh OUT_DIR [parts...]   parts: ckpt, bigplan, tests, accelerate (default: all)
# Env: BIGPLAN_SPLIT (default "cuda:0=16GiB,cuda:1=16GiB": room for batch 8), BIGPLAN_REPEAT (default 5),
# BIGPLAN_SKIP_OFFLOAD=1 (only the resident configurations). Run from the repo root on a
# 2-GPU machine with the bundle in .bundle/ (tools/bundle_gpu.sh //benchmarks/gpu:e2e_bench //tools:gen_checkpoint
# //tests/e2e:e2e_gpu_test //tools:plan).
set -uo pipefail
out="${1:?OUT_DIR}"; shift
parts=("$@"); ((${#parts[@]})) || parts=(ckpt bigplan tests accelerate)
has() { local p; for p in "${parts[@]}"; do [[ "$p" == "$1" ]] && return 0; done; return 1; }
mkdir -p "$out"
env=.bundle/gpu_env.sh; bin=.bundle/bin
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off (the device tool's KINDS.md)
ckpt=/tmp/llama-3-8b-bf16
nvidia-smi --query-gpu=index,name,memory.total --format=csv | tee "$out/gpus.txt"
if has ckpt; then BIGPLAN_CKPT=$ckpt benchmarks/gpu/compressed_check.sh "$out" ckpt; fi
if has bigplan; then
  offload=(--gpu-budgets 8 --offload-split "${BIGPLAN_OFFLOAD_SPLIT:-cuda:0=4GiB,cuda:1=4GiB}")
  [[ -n "${BIGPLAN_SKIP_OFFLOAD:-}" ]] && offload=()
  "$env" "$bin/e2e_bench" --model "$ckpt" --gpu-budgets "" --resident-budget-gib 70 \
    --resident-split "${BIGPLAN_SPLIT:-cuda:0=16GiB,cuda:1=16GiB}" "${offload[@]}" --prefill 512 \
    --repeat "${BIGPLAN_REPEAT:-5}" --prefill-batch 8 --micro-batch-rows 1,2 --split-stride 0 \
    --out "$out/bigplan_split.json" 2>&1 | tee "$out/bigplan_split.txt" | grep -E "^ |floors|=="
  if [[ -z "${BIGPLAN_SKIP_OFFLOAD:-}" ]]; then
    "$env" "$bin/e2e_bench" --model "$ckpt" --gpu-budgets "" --offload-split "${BIGPLAN_OFFLOAD_SPLIT:-cuda:0=4GiB,cuda:1=4GiB}" \
      --auto-candidates BPC --prefill 512 --repeat "${BIGPLAN_REPEAT:-5}" --out "$out/bigplan_one_link.json" 2>&1 |
      tee "$out/bigplan_one_link.txt" | grep -E "^ |floors|=="
  fi
fi
if has accelerate; then
  split="${BIGPLAN_SPLIT:-cuda:0=16GiB,cuda:1=16GiB}"
  python3 benchmarks/accelerate_pipeline_baseline.py --checkpoint "$ckpt" --batch 8 --prefill 512 \
    --max-memory "${split//cuda:/}" --out "$out/accelerate_pipeline.json" 2>&1 | tee "$out/accelerate_pipeline.txt" |
    grep -E "tokens/s|Error"
fi
if has tests && [[ -x $bin/e2e_gpu_test ]]; then
  BIGPLAN_TINY_MODELS="${BIGPLAN_TINY_MODELS:-/tmp/bigplan-tiny-models}"
  [[ -d $BIGPLAN_TINY_MODELS/gptj ]] || python3 tests/reference/make_tiny_models.py --out-root "$BIGPLAN_TINY_MODELS" \
    --families all > /dev/null
  BIGPLAN_TINY_MODELS=$BIGPLAN_TINY_MODELS "$env" "$bin/e2e_gpu_test" --gtest_filter='*TwoGpu*' 2>&1 |
    tee "$out/e2e_gpu_test_two_gpus.txt" | grep -E "two GPUs|^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]"
fi
