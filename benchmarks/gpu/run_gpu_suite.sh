#!/usr/bin/env bash
# The GPU benchmark suite, run on the GPU machine from the repository root after tools/bundle_gpu.sh has put the
# binaries in .bundle/ (see benchmarks/RESULTS.md for the exact commands used for the published numbers).
#
#   benchmarks/gpu/run_gpu_suite.sh OUT_DIR [what...]     what: ckpt bigplan accelerate (default: all three)
#
# 1. ckpt:       writes a Llama-2-7B-shaped bf16 checkpoint (random weights, 2 GiB shards) with the project's writer
#                to $BIGPLAN_BENCH_CKPT (default /tmp/llama-2-7b-bf16) unless it is already there;
# 2. bigplan:    //benchmarks/gpu:e2e_bench over the budget sweep, a disk-tier configuration and all-resident;
# 3. accelerate: benchmarks/accelerate_baseline.py on the same checkpoint and budgets.
set -euo pipefail
out="${1:?usage: run_gpu_suite.sh OUT_DIR [ckpt bigplan accelerate]}"; shift
what=("$@"); ((${#what[@]})) || what=(ckpt bigplan accelerate)
mkdir -p "$out"
ckpt="${BIGPLAN_BENCH_CKPT:-/tmp/llama-2-7b-bf16}"
budgets="${BIGPLAN_BENCH_BUDGETS:-4,6,8,10,12,14}"
env=.bundle/gpu_env.sh
bin=.bundle/bin
has() { local w; for w in "${what[@]}"; do [[ $w == "$1" ]] && return 0; done; return 1; }

if has ckpt && [[ ! -f "$ckpt/model.safetensors.index.json" ]]; then
  mkdir -p "$ckpt"
  python3 - "$ckpt" <<'PY'
import json, sys
d = sys.argv[1]
tensors = json.load(open("planner/examples/llama-2-7b/tensors.json"))
for t in tensors:
    t["dtype"] = "BF16"
json.dump({"tensors": tensors}, open(d + "/spec.json", "w"))
cfg = json.load(open("planner/examples/llama-2-7b/config.json"))
cfg["torch_dtype"] = "bfloat16"
json.dump(cfg, open(d + "/config.json", "w"), indent=2)
PY
  start=$(date +%s.%N)
  "$env" "$bin/gen_checkpoint" --out "$ckpt" --spec "$ckpt/spec.json" --max-shard-bytes 2GiB --seed 7
  echo "checkpoint written in $(( $(date +%s) - ${start%.*} )) s: $(du -sh "$ckpt" | cut -f1)"
fi

if has bigplan; then
  "$env" "$bin/e2e_bench" --model "$ckpt" --gpu-budgets "$budgets" --cpu-budget-gib 100 \
    --disk-config "${BIGPLAN_BENCH_DISK:-4:4}" --resident-budget-gib 40 --prefill 512 --repeat 5 \
    --drop-caches --trace-dir "$out/traces" --out "$out/bigplan.json"
fi

if has accelerate; then
  sync; echo 3 > /proc/sys/vm/drop_caches || true
  PYTHONUNBUFFERED=1 python3 benchmarks/accelerate_baseline.py --checkpoint "$ckpt" --gpu-budgets-gib "$budgets" \
    --cpu-budget-gib 100 --prefill 512 --repeat 3 --resident --out "$out/accelerate.json"
fi
