#!/usr/bin/env bash
# Load time from a cold page cache: process start to first logits, bigplan (//tools:run) against Accelerate
# (load_checkpoint_and_dispatch), for the same checkpoint and budgets. Run on the GPU machine as root (it drops the
# page cache before each process) after run_gpu_suite.sh has written the checkpoint.
#   benchmarks/gpu/load_compare.sh OUT_DIR [GPU_GIB...]      (default budgets: 4 40)
set -euo pipefail
out="${1:?usage: load_compare.sh OUT_DIR [GPU_GIB...]}"; shift
budgets=("$@"); ((${#budgets[@]})) || budgets=(4 40)
ckpt="${BIGPLAN_BENCH_CKPT:-/tmp/llama-2-7b-bf16}"
env=.bundle/gpu_env.sh
bin=.bundle/bin
mkdir -p "$out"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
# Source bandwidth: O_DIRECT sequential read of the shards, cold.
drop
t0=$(now); bytes=0
for f in "$ckpt"/*.safetensors; do dd if="$f" of=/dev/null bs=64M iflag=direct status=none; bytes=$((bytes + $(stat -c %s "$f"))); done
disk_s=$(python3 -c "print($(now) - $t0)")
echo "{\"checkpoint_bytes\": $bytes, \"disk_read_s\": $disk_s}" > "$out/disk.json"
echo "disk: $bytes bytes in $disk_s s"
for b in "${budgets[@]}"; do
  plan="$out/load_$b.bplan"
  "$env" "$bin/plan" --model "$ckpt" --max-memory "cuda:0=${b}GiB,cpu=100GiB" --dtype bf16 --seq-len 1024 -o "$plan" --quiet >/dev/null
  drop
  t0=$(now)
  "$env" "$bin/run" --plan "$plan" --model "$ckpt" --prompt-ids 1,2,3 --max-new-tokens 1 --quiet > "$out/run_$b.txt" 2>&1
  ours=$(python3 -c "print($(now) - $t0)")
  drop
  python3 benchmarks/accelerate_baseline.py --checkpoint "$ckpt" --gpu-budgets-gib "$b" --repeat 1 --prefill 8 \
    --out "$out/acc_load_$b.json" > "$out/acc_load_$b.log" 2>&1
  acc=$(python3 -c "import json; print(json.load(open('$out/acc_load_$b.json'))['process_to_first_logits_s'])")
  echo "{\"gpu_budget_gib\": $b, \"bigplan_process_to_first_token_s\": $ours, \"accelerate_process_to_first_logits_s\": $acc}" | tee "$out/load_$b.json"
done
