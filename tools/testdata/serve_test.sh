#!/usr/bin/env bash
# The OpenAI-compatible server on loopback with the real SmolLM2-135M-Instruct on the CPU (plan batch 8):
# greedy text equals transformers' through the openai package and curl, a load test of 32 concurrent clients
# (serve_client.py), bad requests, a dropped client, then SIGTERM drains a running request and exits 0.
set -euo pipefail

runfiles="${RUNFILES_DIR:-${TEST_SRCDIR:-$0.runfiles}}"
python="$runfiles/torch/python3.sh"
plan="$runfiles/bigplan/tools/plan"
serve="$runfiles/bigplan/tools/serve"
work="${TEST_TMPDIR:-$(mktemp -d)}"
unset BUILD_WORKING_DIRECTORY
fail() { echo "FAIL: $*" >&2; [[ -n "${pid:-}" ]] && kill "$pid" 2>/dev/null; exit 1; }

home="$(getent passwd "$(id -u)" | cut -d: -f6)"
model="${BIGPLAN_MODELS:-$home/.cache/bigplan/models}/smollm2-135m-instruct"
if [[ ! -f "$model/.bigplan-converted" ]]; then
  model="$work/smollm2"
  "$python" "$runfiles/bigplan/tools/make_smollm2.py" --out "$model" >/dev/null 2>&1 || fail "could not convert SmolLM2"
fi
"$plan" --quiet --model "$model" --max-memory cpu=8GiB --dtype f32 --batch 8 --seq-len 256 -o "$work/smol.bplan" \
  >/dev/null || fail "plan"
"$python" "$runfiles/bigplan/tools/testdata/smollm2_reference.py" "$model" "$work/ref.json" >/dev/null 2>&1 \
  || fail "transformers reference"

"$serve" --quiet --plan "$work/smol.bplan" --model "$model" --port 0 2> "$work/serve.err" &
pid=$!
for _ in $(seq 1 300); do
  grep -q "listening on" "$work/serve.err" && break
  kill -0 "$pid" 2>/dev/null || fail "serve exited: $(cat "$work/serve.err")"
  sleep 0.2
done
port="$(grep -o 'http://127.0.0.1:[0-9]*' "$work/serve.err" | cut -d: -f3)"
[[ -n "$port" ]] || fail "serve did not start: $(cat "$work/serve.err")"

# curl: health, models, a greedy chat completion.
curl -sf "http://127.0.0.1:$port/health" | grep -q '"status":"ok"' || fail "/health"
curl -sf "http://127.0.0.1:$port/v1/models" | grep -q '"object":"list"' || fail "/v1/models"
curl -sf "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 16}' \
  > "$work/curl.json" || fail "curl chat"
grep -q '"content":"The capital of France is Paris."' "$work/curl.json" || fail "curl chat: $(cat "$work/curl.json")"

"$python" "$runfiles/bigplan/tools/testdata/serve_client.py" "$port" "$work/ref.json" || fail "clients"

# SIGTERM while a request runs: it completes, later requests are refused, the server exits 0.
curl -s "http://127.0.0.1:$port/v1/completions" -d '{"prompt": "Once upon a time", "temperature": 0, "max_tokens": 24}' \
  > "$work/drain.json" &
curl_pid=$!
for _ in $(seq 1 100); do
  curl -s "http://127.0.0.1:$port/health" | grep -q '"active":1' && break
  sleep 0.1
done
kill -TERM "$pid"
wait "$curl_pid" || fail "the running request failed during the drain"
grep -q '"finish_reason":"length"' "$work/drain.json" || fail "drained request: $(cat "$work/drain.json")"
rc=0
wait "$pid" || rc=$?
pid=
[[ $rc -eq 0 ]] || fail "serve exited with $rc after SIGTERM: $(cat "$work/serve.err")"
grep -q "stopped after" "$work/serve.err" || fail "no shutdown report"
max_rows="$(sed -n 's/.*at most \([0-9]*\) rows per step.*/\1/p' "$work/serve.err")"
echo "server: $(grep 'stopped after' "$work/serve.err")"
[[ "${max_rows:-0}" -gt 1 ]] || fail "concurrent requests never shared a step"
echo PASS
