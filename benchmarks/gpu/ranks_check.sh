#!/usr/bin/env bash
# Ranks (issue "several GPUs", part 4): the Llama-3-8B shape (random bf16 weights) planned over two GPUs
# (cuda:0=16GiB,cuda:1=16GiB: the embedding and the first half of the layers on cuda:0), generated greedily from
# the same prompt (32 tokens, batch 1 and batch 4) by
#   one process and two processes, one per GPU (run --world-size 2 --rank R --rendezvous 127.0.0.1:PORT), each with
#   eager steps (--no-cuda-graphs) and with decode steps replayed from CUDA graphs (the default),
# then compares the tokens (ranks against one process on the same path) and prints the timings. Then the ranks
# tests of the GPU suite (two ranks as threads, NCCL, tiny models vs one process). The plan is made for batch 4, so
# the planner deals the layers in groups of 4 (candidate I): each rank computes four runs of layers.
# BIGPLAN_RANKS_CANDIDATES=T plans every block split over both GPUs instead (tensor parallel): rank r computes shard r
# of every block, the shards' partial sums added by NCCL all-reduces (default BPCEIS: the split by layers).
#
#   benchmarks/gpu/ranks_check.sh OUT_DIR [ckpt]     (run from the repo root on a 2-GPU machine with the bundle
#                                                    from tools/bundle_gpu.sh //tools:run //tools:plan
#                                                    //tools:gen_checkpoint //tests/e2e:ranks_test)
set -uo pipefail
out="${1:?OUT_DIR}"; shift
mkdir -p "$out"
env=.bundle/gpu_env.sh; bin=.bundle/bin
export NCCL_NVLS_ENABLE=0  # NVLink multicast stays off (the device tool's KINDS.md)
ckpt=/tmp/llama-3-8b-bf16
if [[ "${1:-}" == ckpt || ! -d $ckpt ]]; then BIGPLAN_CKPT=$ckpt benchmarks/gpu/compressed_check.sh "$out" ckpt; fi
nvidia-smi --query-gpu=index,name --format=csv,noheader | tee "$out/gpus.txt"
"$env" "$bin/plan" --model "$ckpt" --max-memory cuda:0=16GiB,cuda:1=16GiB --batch 4 --seq-len 128 \
  --auto-candidates "${BIGPLAN_RANKS_CANDIDATES:-BPCEIS}" -o "$out/split.bplan" \
  > "$out/plan.txt" 2>&1 || { cat "$out/plan.txt"; exit 1; }
grep -E "cuda:|placement|predicted" "$out/plan.txt" | head -8
ids=$(python3 -c 'import random; r=random.Random(5); print(",".join(str(r.randrange(128000)) for _ in range(32)))')
run() { "$env" "$bin/run" --plan "$out/split.bplan" --model "$ckpt" --max-new-tokens 32 --quiet "$@"; }
for batch in 1 4; do
  run --prompt-ids "$ids" --batch $batch --no-cuda-graphs > "$out/one_eager_b$batch.txt" 2>&1
  run --prompt-ids "$ids" --batch $batch > "$out/one_graphs_b$batch.txt" 2>&1
  for mode in graphs eager; do
    flags=(); [[ $mode == eager ]] && flags=(--no-cuda-graphs)
    port=$((29600 + batch + ${#flags[@]} * 10))
    run --world-size 2 --rank 1 --rendezvous 127.0.0.1:$port "${flags[@]}" > "$out/rank1_${mode}_b$batch.txt" 2>&1 &
    run --world-size 2 --rank 0 --rendezvous 127.0.0.1:$port --prompt-ids "$ids" --batch $batch "${flags[@]}" \
      > "$out/rank0_${mode}_b$batch.txt" 2>&1
    wait
  done
  for f in one_eager rank0_eager one_graphs rank0_graphs; do
    printf "batch %d %-12s %s | %s\n" $batch "$f" "$(grep -m1 'decode:' "$out/${f}_b$batch.txt")" \
      "$(grep -m1 'time to first' "$out/${f}_b$batch.txt")"
  done
  tail -1 "$out/rank1_graphs_b$batch.txt"
  for mode in eager graphs; do
    if diff <(grep '^tokens' "$out/one_${mode}_b$batch.txt") <(grep '^tokens' "$out/rank0_${mode}_b$batch.txt") > /dev/null; then
      echo "batch $batch, $mode: two ranks give the one process's tokens ($(grep -c '^tokens' "$out/rank0_${mode}_b$batch.txt") rows)"
    else
      echo "batch $batch, $mode: TOKENS DIFFER"; grep '^tokens' "$out/one_${mode}_b$batch.txt" "$out/rank0_${mode}_b$batch.txt" | head -4
    fi
  done
done
if [[ -x $bin/ranks_test ]]; then
  BIGPLAN_TINY_MODELS="${BIGPLAN_TINY_MODELS:-/tmp/bigplan-tiny-models}"
  [[ -d $BIGPLAN_TINY_MODELS/gptj ]] || python3 tests/reference/make_tiny_models.py --out-root "$BIGPLAN_TINY_MODELS" \
    --families all > /dev/null
  BIGPLAN_PLAN_TOOL=$PWD/$bin/plan BIGPLAN_TINY_MODELS=$BIGPLAN_TINY_MODELS "$env" "$bin/ranks_test" 2>&1 | tee "$out/ranks_test.txt" |
    grep -E "two ranks|^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]"
fi
