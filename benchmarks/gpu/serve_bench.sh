#!/usr/bin/env bash
# Continuous-batching benchmark of `serve` (issue: 16 concurrent streams vs 1 on a Llama-3-8B-shaped model
# offloaded at cuda:0=6GiB; target aggregate >= 12x one stream's tokens/s), with random bf16 weights.
#
# On the development machine (bundles the binaries plus the shared libraries the GPU host may lack):
#   benchmarks/gpu/serve_bench.sh prepare [more bazel targets to bundle]   (tools/bundle_gpu.sh replaces .bundle/)
# Then on the GPU machine, from a copy of the repository with .bundle/ in it:
#   benchmarks/gpu/serve_bench.sh run OUT_DIR
# Environment (run): BIGPLAN_BENCH_CKPT (default /tmp/llama-3-8b-bf16), BIGPLAN_SERVE_BUDGET (cuda:0=6GiB,cpu=100GiB),
#   BIGPLAN_SERVE_TOKENS (64 new tokens per request), BIGPLAN_SERVE_REQUESTS (requests per stream, default 2),
#   BIGPLAN_SERVE_STREAMS ("1 16": the runs to make), BIGPLAN_SERVE_SEQ (the plan's max_seq_len, default 1024).
# Writes OUT_DIR/streams_<S>.json (aggregate and per-stream tokens/s, TTFT mean/p50/p90/max), OUT_DIR/plan.txt,
# OUT_DIR/serve_<S>.log and OUT_DIR/summary.txt (the ratio of 16 streams' aggregate to one stream's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
mode="${1:?usage: serve_bench.sh prepare | run OUT_DIR}"

if [[ $mode == prepare ]]; then
  shift
  tools/bundle_gpu.sh //tools:plan //tools:serve //tools:gen_checkpoint "$@"
  # Debian 12 libraries of the text and server code that an Ubuntu GPU host may not have (or not this version).
  mkdir -p .bundle/lib
  for bin in .bundle/bin/serve .bundle/bin/plan; do
    { ldd "$bin" | awk '/=> \// {print $3}' | grep -E 'libicu|libpcre2|libsentencepiece|libprotobuf|libcpp-httplib|libbrotli' \
      || true; } | while read -r lib; do cp -L "$lib" .bundle/lib/; done
  done
  # The SmolLM2 tokenizer serves as the random model's tokenizer (its ids are a subset of the model's vocabulary).
  smol="${BIGPLAN_MODELS:-$HOME/.cache/bigplan/models}/smollm2-135m-instruct"
  cp "$smol/tokenizer.json" "$smol/tokenizer_config.json" .bundle/
  ls -la .bundle/lib
  exit 0
fi

[[ $mode == run ]] || { echo "usage: serve_bench.sh prepare | run OUT_DIR" >&2; exit 2; }
out="${2:?usage: serve_bench.sh run OUT_DIR}"
mkdir -p "$out"
ckpt="${BIGPLAN_BENCH_CKPT:-/tmp/llama-3-8b-bf16}"
budget="${BIGPLAN_SERVE_BUDGET:-cuda:0=6GiB,cpu=100GiB}"
tokens="${BIGPLAN_SERVE_TOKENS:-64}"
requests="${BIGPLAN_SERVE_REQUESTS:-2}"
streams_list="${BIGPLAN_SERVE_STREAMS:-1 16}"
export LD_LIBRARY_PATH="$PWD/.bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
env=.bundle/gpu_env.sh
bin=.bundle/bin

if [[ ! -f "$ckpt/model.safetensors.index.json" ]]; then
  mkdir -p "$ckpt"
  python3 - "$ckpt" <<'PY'
import json, sys
d = sys.argv[1]
# Llama-3-8B: hidden 4096, 32 layers, 32 heads / 8 KV heads, intermediate 14336, vocab 128256, untied lm_head.
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
       "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
       "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
       "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": 128001}
json.dump(cfg, open(d + "/config.json", "w"), indent=2)
h, i, v, kv = 4096, 14336, 128256, 1024
t = [{"name": "model.embed_tokens.weight", "shape": [v, h]}]
for l in range(32):
    p = f"model.layers.{l}."
    t += [{"name": p + "input_layernorm.weight", "shape": [h]},
          {"name": p + "self_attn.q_proj.weight", "shape": [h, h]},
          {"name": p + "self_attn.k_proj.weight", "shape": [kv, h]},
          {"name": p + "self_attn.v_proj.weight", "shape": [kv, h]},
          {"name": p + "self_attn.o_proj.weight", "shape": [h, h]},
          {"name": p + "post_attention_layernorm.weight", "shape": [h]},
          {"name": p + "mlp.gate_proj.weight", "shape": [i, h]},
          {"name": p + "mlp.up_proj.weight", "shape": [i, h]},
          {"name": p + "mlp.down_proj.weight", "shape": [h, i]}]
t += [{"name": "model.norm.weight", "shape": [h]}, {"name": "lm_head.weight", "shape": [v, h]}]
for x in t:
    x["dtype"] = "BF16"
json.dump({"tensors": t}, open(d + "/spec.json", "w"))
PY
  "$env" "$bin/gen_checkpoint" --out "$ckpt" --spec "$ckpt/spec.json" --max-shard-bytes 2GiB --seed 11
fi
cp .bundle/tokenizer.json .bundle/tokenizer_config.json "$ckpt/"

max_streams=1
for s in $streams_list; do ((s > max_streams)) && max_streams=$s; done
"$env" "$bin/plan" --model "$ckpt" --max-memory "$budget" --dtype bf16 --batch "$max_streams" --seq-len "${BIGPLAN_SERVE_SEQ:-1024}" \
  -o "$out/plan.bplan" | tee "$out/plan.txt"

for s in $streams_list; do
  "$env" "$bin/serve" --quiet --plan "$out/plan.bplan" --model "$ckpt" --port 0 2> "$out/serve_$s.log" &
  pid=$!
  for _ in $(seq 1 1800); do grep -q "listening on" "$out/serve_$s.log" && break; sleep 1; done
  port="$(grep -o 'http://127.0.0.1:[0-9]*' "$out/serve_$s.log" | cut -d: -f3)"
  # Warm-up (cuBLAS, allocator), then the measured run.
  python3 benchmarks/gpu/serve_bench_client.py --port "$port" --streams 1 --requests-per-stream 1 --max-tokens 4 \
    --out "$out/warmup_$s.json" > /dev/null
  python3 benchmarks/gpu/serve_bench_client.py --port "$port" --streams "$s" --requests-per-stream "$requests" \
    --max-tokens "$tokens" --out "$out/streams_$s.json"
  kill -TERM "$pid"
  wait "$pid" || true
done

python3 - "$out" $streams_list <<'PY' | tee "$out/summary.txt"
import json, sys
out, runs = sys.argv[1], [int(s) for s in sys.argv[2:]]
res = {s: json.load(open(f"{out}/streams_{s}.json")) for s in runs}
for s, r in res.items():
    print(f"{s:3d} streams: aggregate {r['aggregate_tokens_per_s']:.2f} tok/s, per stream "
          f"{r['per_stream_tokens_per_s_mean']:.2f} tok/s, TTFT mean {r['ttft_s']['mean']:.3f} s "
          f"p90 {r['ttft_s']['p90']:.3f} s, errors {len(r['errors'])}")
if 1 in res and len(res) > 1:
    top = max(res)
    print(f"{top} streams / 1 stream aggregate: {res[top]['aggregate_tokens_per_s'] / res[1]['aggregate_tokens_per_s']:.2f}x"
          " (target >= 12x)")
PY
