#!/usr/bin/env bash
# Mixture-of-experts decode on one GPU against Accelerate: random-weight bf16 checkpoints in the Hub's per-expert layout
# (written by gen_checkpoint from a tensor list, plus a config.json), cut to a few layers so they fit the machine:
#   qwen3   Qwen3-30B-A3B shape (Qwen3MoeForCausalLM): hidden 2048, 128 experts top-8 (norm_topk_prob), expert
#           width 768, GQA 32:4 with head_dim 128 and q/k RMSNorm, vocab 151936, untied; NLAYERS layers (default 24).
#   mixtral Mixtral-8x7B shape (MixtralForCausalLM): hidden 4096, 8 experts top-2, expert width 14336, GQA 32:8,
#           vocab 32000; NLAYERS_MIXTRAL layers (default 8).
# Then, per model, Accelerate's big-model inference as the issue's reference does it:
# AutoModelForCausalLM.from_pretrained(dir, device_map="auto", max_memory={0: BUDGET, "cpu": "100GiB"}) (8 GiB for
# qwen3, 16 GiB for mixtral), a 16-token prefill and 4 KV-cached decode steps (Accelerate moves every offloaded layer
# each step, seconds per token: a few steps suffice), and bigplan's plan/bench steps (run_bigplan, to be filled in).
#
#   benchmarks/gpu/moe_check.sh OUT_DIR [parts...]
# parts: ckpt, bigplan, accelerate (default: all). Run from the repo root on the GPU machine with the bundle in
# .bundle/ (tools/bundle_gpu.sh); locally gen_checkpoint comes from bazel-bin (bazel build -c opt //tools:gen_checkpoint).
#
# Environment (defaults in brackets):
#   BIGPLAN_MOE_MODELS [qwen3,mixtral]      which models
#   NLAYERS [24], NLAYERS_MIXTRAL [8]       layers kept of each model
#   QWEN3_VOCAB [151936], MIXTRAL_VOCAB [32000], QWEN3_EXPERTS [128], MIXTRAL_EXPERTS [8]
#                                           smaller values only to check this script on a small machine
#   BIGPLAN_MOE_CKPT_ROOT [/tmp]            checkpoints go to ROOT/moe-<model>-L<layers>[-v<vocab>][-e<experts>]
#   BIGPLAN_BUDGET_QWEN3 [8], BIGPLAN_BUDGET_MIXTRAL [16]   GPU budget in GiB
#   BIGPLAN_CPU_BUDGET [100]                host budget in GiB
#   BIGPLAN_DECODE_PREFILL [16], BIGPLAN_DECODE_STEPS [4]
#   BIGPLAN_SKIP_ACCELERATE=1               leave Accelerate out
#   BIGPLAN_CPU_SHARE [auto,off]            e2e_bench --cpu-share
#   BIGPLAN_EXPERT_PREFETCH [plan]          e2e_bench --expert-prefetch (plan, or counts: 0,1,2)
#   BIGPLAN_EXPERT_SPLIT []                 e2e_bench --expert-split (rows, e.g. 64,0; 0: whole experts on the host)
#   BIGPLAN_HOST_SPIN []                    e2e_bench --host-spin-us (the host job thread's spin for the next job, us)
#   BIGPLAN_HOST_THREADS []                 e2e_bench --host-threads (the host's computing threads; default: cores - 1)
#   BIGPLAN_WEIGHTS []                      e2e_bench --weights (fp8, int8, int4: experts and other weights quantized
#                                           at load; routed experts then move and are computed in that format)
#   BIGPLAN_AUTO_CANDIDATES []              e2e_bench --auto-candidates (e.g. P: whole layers streamed, for comparison)
#   BIGPLAN_ADAPT_SHARE=1                   e2e_bench --adapt-share (the host share follows the host's measured speed)
#   BIGPLAN_MOE_SPLIT_GIB []                also over several GPUs, GiB each joined by '+' (e.g. 8+8: e2e_bench
#                                           --offload-split cuda:0=8GiB,cuda:1=8GiB with the same host shares, and
#                                           Accelerate with max_memory {0: 8GiB, 1: 8GiB, cpu})
#   BIGPLAN_KINETO=1                        also a Kineto trace of 3 decode steps per configuration (e2e_bench
#                                           --kineto), summarized by kineto_summary.py (the device) and
#                                           kineto_host_ops.py (the issuing thread) into the traces archive
#   BIGPLAN_GEN_CHECKPOINT                  the gen_checkpoint binary; PYTHON [python3]
#   BIGPLAN_E2E_BENCH                       the e2e_bench binary (e.g. another build's, to compare on one machine)
# Writes OUT_DIR/{spec,accelerate,bigplan}_<model>.{json,txt} and OUT_DIR/moe_check.json (a summary).
set -euo pipefail
out="${1:?usage: moe_check.sh OUT_DIR [ckpt|bigplan|accelerate ...]}"; shift
parts=("$@"); ((${#parts[@]})) || parts=(ckpt bigplan accelerate)
has() { local p; for p in "${parts[@]}"; do [[ "$p" == "$1" ]] && return 0; done; return 1; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"

PY="${PYTHON:-python3}"
env_wrap=()
[[ -x .bundle/gpu_env.sh ]] && env_wrap=(.bundle/gpu_env.sh)
if [[ -n "${BIGPLAN_GEN_CHECKPOINT:-}" ]]; then gen="$BIGPLAN_GEN_CHECKPOINT"
elif [[ -x .bundle/bin/gen_checkpoint ]]; then gen=.bundle/bin/gen_checkpoint
else gen=bazel-bin/tools/gen_checkpoint; fi
models="${BIGPLAN_MOE_MODELS:-qwen3,mixtral}"
nlayers="${NLAYERS:-24}"
nlayers_mixtral="${NLAYERS_MIXTRAL:-8}"
qwen3_vocab="${QWEN3_VOCAB:-151936}"; mixtral_vocab="${MIXTRAL_VOCAB:-32000}"
qwen3_experts="${QWEN3_EXPERTS:-128}"; mixtral_experts="${MIXTRAL_EXPERTS:-8}"
root="${BIGPLAN_MOE_CKPT_ROOT:-/tmp}"
cpu_budget="${BIGPLAN_CPU_BUDGET:-100}"
decode_prefill="${BIGPLAN_DECODE_PREFILL:-16}"
decode_steps="${BIGPLAN_DECODE_STEPS:-4}"

say() { echo "== moe_check: $*"; }

# ckpt_dir MODEL: the checkpoint directory of MODEL for the current settings.
ckpt_dir() {
  case "$1" in
    qwen3) local d="$root/moe-qwen3-30b-a3b-L$nlayers"
           [[ "$qwen3_vocab" != 151936 ]] && d+="-v$qwen3_vocab"
           [[ "$qwen3_experts" != 128 ]] && d+="-e$qwen3_experts"
           echo "$d" ;;
    mixtral) local d="$root/moe-mixtral-8x7b-L$nlayers_mixtral"
             [[ "$mixtral_vocab" != 32000 ]] && d+="-v$mixtral_vocab"
             [[ "$mixtral_experts" != 8 ]] && d+="-e$mixtral_experts"
             echo "$d" ;;
    *) echo "moe_check: unknown model '$1' (known: qwen3, mixtral)" >&2; return 1 ;;
  esac
}

budget_of() {
  case "$1" in qwen3) echo "${BIGPLAN_BUDGET_QWEN3:-8}" ;; mixtral) echo "${BIGPLAN_BUDGET_MIXTRAL:-16}" ;; esac
}

# write_config_and_spec MODEL DIR: DIR/config.json (transformers' config of the real model, cut to the chosen layers)
# and DIR/spec.json.new (gen_checkpoint's tensor list: every tensor from_pretrained expects, Hub per-expert names).
write_config_and_spec() {
  "$PY" - "$1" "$2" "$nlayers" "$nlayers_mixtral" "$qwen3_vocab" "$mixtral_vocab" "$qwen3_experts" \
    "$mixtral_experts" <<'PY'
import json, math, sys
model, d = sys.argv[1], sys.argv[2]
nl_q, nl_m, v_q, v_m, e_q, e_m = (int(x) for x in sys.argv[3:9])
if model == "qwen3":
    H, L, V, NH, KV, HD, E, K, MI, I = 2048, nl_q, v_q, 32, 4, 128, e_q, min(8, e_q), 768, 6144
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H,
           "intermediate_size": I, "moe_intermediate_size": MI, "num_hidden_layers": L, "num_attention_heads": NH,
           "num_key_value_heads": KV, "head_dim": HD, "num_experts": E, "num_experts_per_tok": K,
           "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": V,
           "max_position_embeddings": 40960, "max_window_layers": L, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
           "rope_scaling": None, "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
           "use_sliding_window": False, "sliding_window": None, "tie_word_embeddings": False,
           "output_router_logits": False, "router_aux_loss_coef": 0.001, "bos_token_id": 151643,
           "eos_token_id": 151645, "torch_dtype": "bfloat16"}
    experts = lambda p, e: [(f"{p}mlp.experts.{e}.gate_proj.weight", [MI, H]),
                            (f"{p}mlp.experts.{e}.up_proj.weight", [MI, H]),
                            (f"{p}mlp.experts.{e}.down_proj.weight", [H, MI])]
    router = lambda p: [(p + "mlp.gate.weight", [E, H])]
    qk_norm = True
else:
    H, L, V, NH, KV, E, K, I = 4096, nl_m, v_m, 32, 8, e_m, min(2, e_m), 14336
    HD = H // NH
    cfg = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": H,
           "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": KV,
           "num_local_experts": E, "num_experts_per_tok": K, "vocab_size": V, "max_position_embeddings": 32768,
           "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "hidden_act": "silu", "attention_dropout": 0.0,
           "sliding_window": None, "tie_word_embeddings": False, "output_router_logits": False,
           "router_aux_loss_coef": 0.02, "router_jitter_noise": 0.0, "bos_token_id": 1, "eos_token_id": 2,
           "torch_dtype": "bfloat16"}
    experts = lambda p, e: [(f"{p}block_sparse_moe.experts.{e}.w1.weight", [I, H]),
                            (f"{p}block_sparse_moe.experts.{e}.w3.weight", [I, H]),
                            (f"{p}block_sparse_moe.experts.{e}.w2.weight", [H, I])]
    router = lambda p: [(p + "block_sparse_moe.gate.weight", [E, H])]
    qk_norm = False
json.dump(cfg, open(d + "/config.json", "w"), indent=2)
t = [("model.embed_tokens.weight", [V, H])]
for i in range(L):
    p = f"model.layers.{i}."
    t += [(p + "input_layernorm.weight", [H]),
          (p + "self_attn.q_proj.weight", [NH * HD, H]),
          (p + "self_attn.k_proj.weight", [KV * HD, H]),
          (p + "self_attn.v_proj.weight", [KV * HD, H]),
          (p + "self_attn.o_proj.weight", [H, NH * HD]),
          (p + "post_attention_layernorm.weight", [H])]
    if qk_norm:
        t += [(p + "self_attn.q_norm.weight", [HD]), (p + "self_attn.k_norm.weight", [HD])]
    t += router(p)
    for e in range(E):
        t += experts(p, e)
t += [("model.norm.weight", [H]), ("lm_head.weight", [V, H])]
json.dump({"tensors": [{"name": n, "shape": s, "dtype": "BF16"} for n, s in t]}, open(d + "/spec.json.new", "w"))
n = sum(math.prod(s) for _, s in t)
print(f"{model}: {len(t)} tensors, {n / 1e9:.2f} G parameters, {2 * n / 2**30:.1f} GiB bf16")
PY
}

# make_ckpt MODEL: writes the checkpoint unless DIR already holds one made from the same tensor list.
make_ckpt() {
  local model="$1" dir; dir="$(ckpt_dir "$model")"
  mkdir -p "$dir"
  say "$model: config and tensor list in $dir"
  write_config_and_spec "$model" "$dir"
  if [[ -f "$dir/model.safetensors.index.json" && -f "$dir/spec.json" ]] && cmp -s "$dir/spec.json" "$dir/spec.json.new"; then
    rm -f "$dir/spec.json.new"
    say "$model: checkpoint already there ($(du -sh "$dir" | cut -f1)), kept"
    return 0
  fi
  rm -f "$dir"/model-*.safetensors "$dir/model.safetensors.index.json"
  mv "$dir/spec.json.new" "$dir/spec.json"
  [[ -x "$gen" ]] || { echo "moe_check: no gen_checkpoint at '$gen' (bazel build -c opt //tools:gen_checkpoint)" >&2; return 1; }
  say "$model: $gen --out $dir --spec $dir/spec.json --max-shard-bytes 2GiB --seed 7"
  local start; start=$(date +%s)
  "${env_wrap[@]}" "$gen" --out "$dir" --spec "$dir/spec.json" --max-shard-bytes 2GiB --seed 7
  sync
  say "$model: checkpoint written in $(( $(date +%s) - start )) s: $(du -sh "$dir" | cut -f1)"
}

# ---------------------------------------------------------------------------------------------------------------------
# PLACEHOLDER (bigplan): plan the checkpoint at the budget and time decode the same way (prefill $decode_prefill
# tokens, then $decode_steps decode steps, seconds per token), writing $out/bigplan_<model>.json. Until the MoE
# families land this only records that it did not run.
#   run_bigplan MODEL CKPT_DIR BUDGET_GIB
run_bigplan() {
  local model="$1" dir="$2" budget="$3"
  local bin=.bundle/bin; [[ -x "$bin/e2e_bench" ]] || bin=bazel-bin/benchmarks/gpu
  local shares="${BIGPLAN_CPU_SHARE:-auto,off}"
  local split=() spec="" g=0 b
  if [[ -n "${BIGPLAN_MOE_SPLIT_GIB:-}" ]]; then
    IFS=+ read -r -a gib <<< "$BIGPLAN_MOE_SPLIT_GIB"
    for b in "${gib[@]}"; do spec+="${spec:+,}cuda:$g=${b}GiB"; g=$((g + 1)); done
    split=(--offload-split "$spec")
    say "$model: also over $g GPUs: $spec"
  fi
  say "$model: bigplan e2e_bench at cuda:0=${budget}GiB,cpu=${cpu_budget}GiB, host shares $shares, prefill 512"
  mkdir -p "$out/traces_$model"
  "${env_wrap[@]}" "${BIGPLAN_E2E_BENCH:-$bin/e2e_bench}" --model "$dir" --gpu-budgets "$budget" \
    --cpu-budget-gib "$cpu_budget" \
    --prefill 512 --repeat "${BIGPLAN_REPEAT:-3}" --cpu-share "$shares" --trace-dir "$out/traces_$model" \
    --expert-prefetch "${BIGPLAN_EXPERT_PREFETCH:-plan}" ${BIGPLAN_EXPERT_SPLIT:+--expert-split "$BIGPLAN_EXPERT_SPLIT"} \
    ${BIGPLAN_KINETO:+--kineto "$out/traces_$model"} ${BIGPLAN_HOST_SPIN:+--host-spin-us "$BIGPLAN_HOST_SPIN"} \
    ${BIGPLAN_HOST_THREADS:+--host-threads "$BIGPLAN_HOST_THREADS"} "${split[@]}" \
    ${BIGPLAN_WEIGHTS:+--weights "$BIGPLAN_WEIGHTS"} ${BIGPLAN_AUTO_CANDIDATES:+--auto-candidates "$BIGPLAN_AUTO_CANDIDATES"} \
    ${BIGPLAN_ADAPT_SHARE:+--adapt-share} \
    --out "$out/bigplan_$model.json" 2>&1 | tee "$out/bigplan_$model.txt" | grep -E "^==|floors|MoE|1 token|error" || true
  for plan in "$out/traces_$model"/*.bplan; do
    [[ -f "$plan" ]] && "${env_wrap[@]}" "$bin/inspect" "$plan" > "${plan%.bplan}.inspect.txt" 2>&1 || true
  done
  for k in "$out/traces_$model"/*.kineto.json; do
    [[ -f "$k" ]] && "$PY" benchmarks/gpu/kineto_summary.py "$k" --dump > "${k%.kineto.json}.kineto.txt" 2>&1 || true
    [[ -f "$k" ]] && "$PY" benchmarks/gpu/kineto_host_ops.py "$k" > "${k%.kineto.json}.host.txt" 2>&1 || true
  done
  # One archive of the plans' inspect output and traces (the plans themselves can be remade).
  rm -f "$out/traces_$model"/*.bplan
  tar -czf "$out/traces_$model.tar.gz" -C "$out" "traces_$model" && rm -rf "${out:?}/traces_$model"
}

run_accelerate() {
  local model="$1" dir="$2" budget="$3"
  if [[ "${BIGPLAN_SKIP_ACCELERATE:-0}" == 1 ]]; then say "$model: Accelerate skipped (BIGPLAN_SKIP_ACCELERATE=1)"; return 0; fi
  say "$model: Accelerate, from_pretrained(device_map=auto, max_memory={0: ${budget}GiB, cpu: ${cpu_budget}GiB}),"\
      "prefill $decode_prefill + $decode_steps decode steps"
  local rc=0
  PYTHONUNBUFFERED=1 "$PY" benchmarks/accelerate_baseline.py --checkpoint "$dir" --loader from_pretrained \
    --gpu-budgets-gib "$budget${BIGPLAN_MOE_SPLIT_GIB:+,$BIGPLAN_MOE_SPLIT_GIB}" --cpu-budget-gib "$cpu_budget" --skip-forward --decode-steps "$decode_steps" \
    --decode-prefill "$decode_prefill" --out "$out/accelerate_$model.json" > "$out/accelerate_$model.txt" 2>&1 || rc=$?
  tail -4 "$out/accelerate_$model.txt"
  ((rc == 0)) || say "$model: Accelerate FAILED (exit $rc; log in $out/accelerate_$model.txt)"
}

IFS=, read -r -a model_list <<< "$models"
for model in "${model_list[@]}"; do
  dir="$(ckpt_dir "$model")"; budget="$(budget_of "$model")"
  has ckpt && make_ckpt "$model"
  [[ -f "$dir/spec.json" ]] && cp "$dir/spec.json" "$out/spec_$model.json"
  if has bigplan; then run_bigplan "$model" "$dir" "$budget"; fi
  if has accelerate; then run_accelerate "$model" "$dir" "$budget"; fi
done

# Summary: per model the checkpoint, its size, the budget, Accelerate's seconds per decode token, bigplan's result.
"$PY" - "$out" "$models" <<'PY'
import json, os, sys
out, models = sys.argv[1], [m for m in sys.argv[2].split(",") if m]
summary = {}
for m in models:
    entry = {}
    for kind in ("accelerate", "bigplan"):
        p = os.path.join(out, f"{kind}_{m}.json")
        if os.path.exists(p):
            try:
                entry[kind] = json.load(open(p))
            except ValueError as e:
                entry[kind] = {"error": f"unreadable {p}: {e}"}
    acc = entry.get("accelerate", {}).get("configs", [{}])
    if acc and "decode_token_s" in acc[0]:
        entry["accelerate_decode_token_s"] = acc[0]["decode_token_s"]
    summary[m] = entry
json.dump(summary, open(os.path.join(out, "moe_check.json"), "w"), indent=1)
for m, e in summary.items():
    print(f"{m}: accelerate decode {e.get('accelerate_decode_token_s', 'n/a')} s/token; "
          f"bigplan {e.get('bigplan', {}).get('status', 'see bigplan_' + m + '.json')}")
PY
say "results in $out"
