#!/usr/bin/env bash
# Plan v2 checks on the GPU machine, in one call (after tools/bundle_gpu.sh; .bundle carried):
#   benchmarks/gpu/plan_v2_check.sh OUT_DIR [tests] [sweep] [big]
#   tests  the GPU test binaries (tools/run_gpu_tests.sh)
#   sweep  the Llama-2-7B-shaped offload sweep at 4, 6, 8 GiB against the PCIe floor (e2e_bench)
#   big32  the same model executed in fp32 (cast at load): the chunked 4 GiB plan and a whole-layer plan give the
#          same greedy tokens (bf16 random-weight logits have near-ties that rounding order decides)
#   bigbench  only the e2e_bench run of that model (BIG_BUDGETS GiB, default 4)
#   big    a Llama-3.1-405B-shaped model cut to 4 layers (random bf16 weights, ~26 GB): plan and run at
#          cuda:0=4GiB (layers larger than the budget, streamed in row chunks) against its floor, and the same
#          tokens as a plan with a larger budget
set -uo pipefail
out="${1:?usage: plan_v2_check.sh OUT_DIR [tests] [sweep] [big]}"; shift
what=("$@"); ((${#what[@]})) || what=(tests sweep big)
mkdir -p "$out"
has() { local w; for w in "${what[@]}"; do [[ $w == "$1" ]] && return 0; done; return 1; }
env=.bundle/gpu_env.sh
bin=.bundle/bin
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
if has tests; then
  OUT="$out" tools/run_gpu_tests.sh 2>&1 | tail -60
fi
if has sweep; then
  BIGPLAN_BENCH_BUDGETS="${SWEEP:-4,6,8}" BIGPLAN_BENCH_DISK="${DISK:-4:4}" benchmarks/gpu/run_gpu_suite.sh "$out/sweep" ckpt bigplan 2>&1 | tail -40
fi
if has big || has big32 || has bigbench; then
  ckpt=/tmp/llama-405b-4l
  mkdir -p "$ckpt"
  python3 - "$ckpt" <<'PY'
import json, sys
d = sys.argv[1]
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16384, "intermediate_size": 53248,
       "num_attention_heads": 128, "num_key_value_heads": 8, "num_hidden_layers": 4, "vocab_size": 128256,
       "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
       "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192, "rope_type": "llama3"},
       "tie_word_embeddings": False, "torch_dtype": "bfloat16", "hidden_act": "silu", "bos_token_id": 128000,
       "eos_token_id": 128001}
json.dump(cfg, open(d + "/config.json", "w"), indent=2)
h, i, v, kv = 16384, 53248, 128256, 8 * 128
t = [{"name": "model.embed_tokens.weight", "shape": [v, h], "dtype": "BF16"}]
for l in range(4):
    p = f"model.layers.{l}."
    t += [{"name": p + "input_layernorm.weight", "shape": [h], "dtype": "BF16"},
          {"name": p + "self_attn.q_proj.weight", "shape": [h, h], "dtype": "BF16"},
          {"name": p + "self_attn.k_proj.weight", "shape": [kv, h], "dtype": "BF16"},
          {"name": p + "self_attn.v_proj.weight", "shape": [kv, h], "dtype": "BF16"},
          {"name": p + "self_attn.o_proj.weight", "shape": [h, h], "dtype": "BF16"},
          {"name": p + "post_attention_layernorm.weight", "shape": [h], "dtype": "BF16"},
          {"name": p + "mlp.gate_proj.weight", "shape": [i, h], "dtype": "BF16"},
          {"name": p + "mlp.up_proj.weight", "shape": [i, h], "dtype": "BF16"},
          {"name": p + "mlp.down_proj.weight", "shape": [h, i], "dtype": "BF16"}]
t += [{"name": "model.norm.weight", "shape": [h], "dtype": "BF16"},
      {"name": "lm_head.weight", "shape": [v, h], "dtype": "BF16"}]
json.dump({"tensors": t}, open(d + "/spec.json", "w"))
PY
  [[ -f "$ckpt/model.safetensors.index.json" ]] || "$env" "$bin/gen_checkpoint" --out "$ckpt" --spec "$ckpt/spec.json" --max-shard-bytes 4GiB --seed 11
  du -sh "$ckpt"
fi
if has big32; then
  echo '{"model.norm": 0, "model.embed_tokens": "cpu", "model.layers": "cpu", "lm_head": "cpu"}' > "$out/big32.map.json"
  "$env" "$bin/plan" --model "$ckpt" --max-memory cuda:0=4GiB,cpu=110GiB --dtype fp32 --seq-len 64 --strategy explicit \
    --device-map "$out/big32.map.json" --chunk-bytes 256MiB -o "$out/big32_4.bplan" 2>&1 | grep -E "stream|decode|floor|error"
  "$env" "$bin/plan" --model "$ckpt" --max-memory cuda:0=${BIG32_REF_GIB:-60}GiB,cpu=110GiB --dtype fp32 --seq-len 64 \
    -o "$out/big32_ref.bplan" 2>&1 | grep -E "layers|stream|decode|floor|error"
  for p in big32_4 big32_ref; do
    "$env" "$bin/run" --plan "$out/$p.bplan" --model "$ckpt" --prompt-ids 128000,791,6864,315,9822,374 \
      --max-new-tokens 6 2>&1 | grep -E "tokens|decode:|load:|streamed|plan:" | tee "$out/$p.run.txt"
  done
fi
if has bigbench; then
  "$env" "$bin/e2e_bench" --model "$ckpt" --gpu-budgets ${BIG_BUDGETS:-4} --cpu-budget-gib 100 --prefill 128 --repeat 3 \
    --out "$out/big_bench.json" 2>&1 | tail -8
fi
if has big; then
  # auto; if this build's auto cannot place it, every layer streamed in row chunks by an explicit map.
  if ! "$env" "$bin/plan" --model "$ckpt" --max-memory cuda:0=4GiB,cpu=100GiB --dtype bf16 --seq-len 256 \
      -o "$out/big4.bplan" > "$out/big4.plan.txt" 2>&1; then
    echo '{"model.norm": 0, "model.embed_tokens": "cpu", "model.layers": "cpu", "lm_head": "cpu"}' > "$out/big4.map.json"
    "$env" "$bin/plan" --model "$ckpt" --max-memory cuda:0=4GiB,cpu=100GiB --dtype bf16 --seq-len 256 \
      --strategy explicit --device-map "$out/big4.map.json" --chunk-bytes ${BIG_CHUNK:-256MiB} \
      -o "$out/big4.bplan" >> "$out/big4.plan.txt" 2>&1
  fi
  tail -25 "$out/big4.plan.txt"
  "$env" "$bin/plan" --model "$ckpt" --max-memory cuda:0=${BIG_REF_GIB:-30}GiB,cpu=100GiB --dtype bf16 --seq-len 256 -o "$out/bigref.bplan" 2>&1 | tail -8
  for p in big4 bigref; do
    "$env" "$bin/run" --plan "$out/$p.bplan" --model "$ckpt" --prompt-ids 128000,791,6864,315,9822,374 --max-new-tokens 4 \
      --trace "$out/$p.trace.json" 2>&1 | tail -12 | tee "$out/$p.run.txt"
  done
  "$env" "$bin/e2e_bench" --model "$ckpt" --gpu-budgets ${BIG_BUDGETS:-4} --cpu-budget-gib 100 --prefill 128 --repeat 3 \
    --out "$out/big_bench.json" 2>&1 | tail -20
fi
