#!/usr/bin/env bash
# Resident speed (decode against the device-memory floor, prefill against the matmul floor): the fused kernels'
# GPU test, then Llama-3-8B- and Llama-2-7B-shaped checkpoints (random bf16 weights) all resident, each timed by
# e2e_bench with the fused kernels and, in the same session, without them (every op on LibTorch), and by
# transformers eager on the same weights.
#
#   benchmarks/gpu/resident_check.sh OUT_DIR [parts...]
# parts: tests, ckpt, bigplan, transformers (default: all). Env: BIGPLAN_RESIDENT_MODELS (default llama3,llama2),
# BIGPLAN_DECODE_BATCHES (default 1,2,4,8), BIGPLAN_MODES (default fused,unfused), BIGPLAN_REPEAT (default 5),
# BIGPLAN_KINETO=1 (a Kineto trace of one more prefill per run: OUT_DIR/resident_*.prefill.kineto.json).
# Run from the repo root on the GPU machine with the bundle in .bundle/ (tools/bundle_gpu.sh //benchmarks/gpu:e2e_bench
# //executor:fused_ops_gpu_test //tools:gen_checkpoint).
set -uo pipefail
out="${1:?OUT_DIR}"; shift
parts=("$@"); ((${#parts[@]})) || parts=(tests ckpt bigplan transformers)
has() { local p; for p in "${parts[@]}"; do [[ "$p" == "$1" ]] && return 0; done; return 1; }
mkdir -p "$out"
env=.bundle/gpu_env.sh; bin=.bundle/bin
IFS=, read -r -a models <<< "${BIGPLAN_RESIDENT_MODELS:-llama3,llama2}"
IFS=, read -r -a modes <<< "${BIGPLAN_MODES:-fused,unfused}"
repeat="${BIGPLAN_REPEAT:-5}"
ckpt_of() { [[ $1 == llama3 ]] && echo /tmp/llama-3-8b-bf16 || echo /tmp/llama-2-7b-bf16; }

if has tests && [[ -x $bin/fused_ops_gpu_test ]]; then
  "$env" "$bin/fused_ops_gpu_test" 2>&1 | tail -25 | tee "$out/fused_ops_gpu_test.txt"
fi
for m in "${models[@]}"; do
  ckpt=$(ckpt_of "$m")
  if has ckpt; then
    if [[ $m == llama3 ]]; then BIGPLAN_CKPT=$ckpt benchmarks/gpu/compressed_check.sh "$out" ckpt
    else BIGPLAN_BENCH_CKPT=$ckpt benchmarks/gpu/run_gpu_suite.sh "$out" ckpt; fi
  fi
  if has bigplan; then
    for mode in "${modes[@]}"; do
      flag=(); [[ $mode == unfused ]] && flag=(--no-fused-kernels)
      "$env" "$bin/e2e_bench" --model "$ckpt" --gpu-budgets "" --resident-budget-gib 70 --prefill 512 \
        --repeat "$repeat" --decode-batches "${BIGPLAN_DECODE_BATCHES:-1,2,4,8}" "${flag[@]}" \
        ${BIGPLAN_KINETO:+--kineto "$out"} \
        --out "$out/bigplan_${m}_${mode}.json" 2>&1 | tee "$out/bigplan_${m}_${mode}.txt" | grep -E "^ |floors|==" 
    done
  fi
  if has transformers; then
    PYTHONUNBUFFERED=1 python3 benchmarks/accelerate_baseline.py --checkpoint "$ckpt" --gpu-budgets-gib "" \
      --prefill 512 --repeat 3 --resident --out "$out/transformers_${m}.json" 2>&1 | tail -3
  fi
done
