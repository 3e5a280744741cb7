#!/usr/bin/env bash
# Compressed weights and hybrid decode on one GPU (issue "below the PCIe floor"): a Llama-3-8B-shaped checkpoint
# (GQA 32:8, vocab 128256, random bf16 weights), planned at `cuda:0=6GiB` once per weight format, each 1-token
# forward against the bf16 floor of that budget, with and without host compute (BIGPLAN_CPU_SHARE, default
# "off,auto"); then transformers + Accelerate at the same budget.
#
#   benchmarks/gpu/compressed_check.sh OUT_DIR [parts...]
# parts: kernels (kernels_quant_gpu_test), matvec (cpu_matvec_bench), ckpt, bigplan, accelerate (default: all).
# Run from the repo root on the GPU machine with the bundle in .bundle/ (tools/bundle_gpu.sh). Part ckpt writes
# BIGPLAN_CKPT (default /tmp/llama-3-8b-bf16) in the shape BIGPLAN_CKPT_SHAPE "hidden,intermediate,layers,heads,
# kv_heads" (default the Llama-3-8B's "4096,14336,32,32,8"; head_dim 128, vocab 128256).
set -uo pipefail
out="${1:?OUT_DIR}"; shift
parts=("$@"); ((${#parts[@]})) || parts=(kernels matvec ckpt bigplan accelerate)
has() { local p; for p in "${parts[@]}"; do [[ "$p" == "$1" ]] && return 0; done; return 1; }
mkdir -p "$out"
env=.bundle/gpu_env.sh; bin=.bundle/bin
ckpt="${BIGPLAN_CKPT:-/tmp/llama-3-8b-bf16}"
budget="${BIGPLAN_BUDGET:-6}"
formats="${BIGPLAN_WEIGHTS:-bf16,fp8,int8,int4}"
shares="${BIGPLAN_CPU_SHARE:-off,auto}"  # plan --cpu-share per configuration (host compute in decode)

if has kernels && [[ -x $bin/kernels_quant_gpu_test ]]; then
  "$env" "$bin/kernels_quant_gpu_test" 2>&1 | tail -25 | tee "$out/kernels_quant_gpu_test.txt"
fi
if has matvec && [[ -x $bin/cpu_matvec_bench ]]; then
  "$env" "$bin/cpu_matvec_bench" --benchmark_min_time=0.3 --benchmark_format=json --benchmark_out="$out/cpu_matvec.json" \
    2>&1 | tail -30 | tee "$out/cpu_matvec.txt"
fi
if has ckpt && [[ ! -f "$ckpt/model.safetensors.index.json" ]]; then
  mkdir -p "$ckpt"
  python3 - "$ckpt" "${BIGPLAN_CKPT_SHAPE:-4096,14336,32,32,8}" <<'PY'
import json, sys
d = sys.argv[1]
H, I, L, NH, KV = (int(x) for x in sys.argv[2].split(","))  # the Llama-3-8B shape by default
V, HD = 128256, 128
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
       "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": KV, "head_dim": HD,
       "vocab_size": V, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "hidden_act": "silu",
       "rope_theta": 500000.0, "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
       "torch_dtype": "bfloat16"}
json.dump(cfg, open(d + "/config.json", "w"), indent=2)
t = [{"name": "model.embed_tokens.weight", "shape": [V, H]}]
for i in range(L):
    p = f"model.layers.{i}."
    t += [{"name": p + "input_layernorm.weight", "shape": [H]},
          {"name": p + "self_attn.q_proj.weight", "shape": [NH * HD, H]},
          {"name": p + "self_attn.k_proj.weight", "shape": [KV * HD, H]},
          {"name": p + "self_attn.v_proj.weight", "shape": [KV * HD, H]},
          {"name": p + "self_attn.o_proj.weight", "shape": [H, NH * HD]},
          {"name": p + "post_attention_layernorm.weight", "shape": [H]},
          {"name": p + "mlp.gate_proj.weight", "shape": [I, H]},
          {"name": p + "mlp.up_proj.weight", "shape": [I, H]},
          {"name": p + "mlp.down_proj.weight", "shape": [H, I]}]
t += [{"name": "model.norm.weight", "shape": [H]}, {"name": "lm_head.weight", "shape": [V, H]}]
for x in t: x["dtype"] = "BF16"
json.dump({"tensors": t}, open(d + "/spec.json", "w"))
PY
  start=$(date +%s)
  if ! "$env" "$bin/gen_checkpoint" --out "$ckpt" --spec "$ckpt/spec.json" --max-shard-bytes 2GiB --seed 7; then
    echo "compressed_check: writing the checkpoint $ckpt failed (is $bin/gen_checkpoint bundled?)" >&2
    rm -f "$ckpt/config.json"  # so a later run writes it again
    exit 1
  fi
  sync; sleep 3
  echo "checkpoint written in $(( $(date +%s) - start )) s: $(du -sh "$ckpt" | cut -f1)"
fi
if has bigplan; then
  "$env" "$bin/e2e_bench" --model "$ckpt" --gpu-budgets "$budget" --cpu-budget-gib 100 --weights "$formats" \
    --cpu-share "$shares" --prefill 512 --repeat 5 --trace-dir "$out/traces" --out "$out/bigplan.json" 2>&1 \
    | grep -v "loading weights" | tee "$out/bigplan.txt"
fi
if has accelerate; then
  PYTHONUNBUFFERED=1 python3 benchmarks/accelerate_baseline.py --checkpoint "$ckpt" --gpu-budgets-gib "$budget" \
    --cpu-budget-gib 100 --prefill 512 --repeat 2 --out "$out/accelerate.json" 2>&1 | tail -8 | tee "$out/accelerate.txt"
fi
