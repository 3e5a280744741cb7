#!/usr/bin/env bash
# The OpenAI-compatible server on loopback, on the CPU:
#  1. SmolLM2-135M-Instruct (plan batch 8): greedy text equals transformers' through curl and the openai package
#     (chat and completions, streamed and not), bad requests get 4xx JSON errors, a dropped client's request is
#     cancelled, and SIGTERM lets a running request finish, refuses new ones and exits 0.
#  2. A tiny random Llama with SmolLM2's tokenizer (plan batch 8, fast): a load test of 32 concurrent clients and
#     200 requests (serve_client.py load): nothing lost, all well-formed, greedy texts equal to each prompt alone,
#     and concurrent requests shared steps.
set -euo pipefail

runfiles="${RUNFILES_DIR:-${TEST_SRCDIR:-$0.runfiles}}"
python="$runfiles/torch/python3.sh"
plan="$runfiles/bigplan/tools/plan"
serve="$runfiles/bigplan/tools/serve"
testdata="$runfiles/bigplan/tools/testdata"
work="${TEST_TMPDIR:-$(mktemp -d)}"
unset BUILD_WORKING_DIRECTORY
pid=
fail() { echo "FAIL: $*" >&2; [[ -n "$pid" ]] && kill "$pid" 2>/dev/null; exit 1; }

home="$(getent passwd "$(id -u)" | cut -d: -f6)"
model="${BIGPLAN_MODELS:-$home/.cache/bigplan/models}/smollm2-135m-instruct"
if [[ ! -f "$model/.bigplan-converted" ]]; then
  model="$work/smollm2"
  "$python" "$runfiles/bigplan/tools/make_smollm2.py" --out "$model" >/dev/null 2>&1 || fail "could not convert SmolLM2"
fi

# start_server PLAN MODEL LOG: starts serve on a free port; sets pid and port.
start_server() {
  "$serve" --quiet --plan "$1" --model "$2" --port 0 2> "$3" &
  pid=$!
  for _ in $(seq 1 600); do
    grep -q "listening on" "$3" && break
    kill -0 "$pid" 2>/dev/null || fail "serve exited: $(cat "$3")"
    sleep 0.2
  done
  port="$(grep -o 'http://127.0.0.1:[0-9]*' "$3" | cut -d: -f3)"
  [[ -n "$port" ]] || fail "serve did not start: $(cat "$3")"
}

# stop_server LOG: SIGTERM (unless it is exiting already, as after a drain), expect exit 0 and the shutdown report.
stop_server() {
  kill -TERM "$pid" 2>/dev/null || true
  local rc=0
  wait "$pid" || rc=$?
  pid=
  [[ $rc -eq 0 ]] || fail "serve exited with $rc after SIGTERM: $(cat "$1")"
  grep -q "stopped after" "$1" || fail "no shutdown report: $(cat "$1")"
}

# ---- 1. SmolLM2: quality against transformers.
"$plan" --quiet --model "$model" --max-memory cpu=8GiB --dtype f32 --batch 8 --seq-len 256 -o "$work/smol.bplan" \
  >/dev/null || fail "plan SmolLM2"
"$python" "$testdata/smollm2_reference.py" "$model" "$work/ref.json" >/dev/null 2>&1 || fail "transformers reference"
start_server "$work/smol.bplan" "$model" "$work/smol.err"
curl -sf "http://127.0.0.1:$port/health" | grep -q '"status":"ok"' || fail "/health"
curl -sf "http://127.0.0.1:$port/v1/models" | grep -q '"object":"list"' || fail "/v1/models"
curl -sf "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 16}' \
  > "$work/curl.json" || fail "curl chat"
grep -q '"content":"The capital of France is Paris."' "$work/curl.json" || fail "curl chat: $(cat "$work/curl.json")"
echo "ok: curl chat completion equals transformers"
"$python" "$testdata/serve_client.py" quality "$port" "$work/ref.json" || fail "quality clients"

# SIGTERM while a request runs: it completes, later requests are refused, the server exits 0.
curl -s "http://127.0.0.1:$port/v1/completions" -d '{"prompt": "Once upon a time", "temperature": 0, "max_tokens": 12}' \
  > "$work/drain.json" &
curl_pid=$!
for _ in $(seq 1 200); do
  curl -s "http://127.0.0.1:$port/health" | grep -q '"active":1' && break
  sleep 0.1
done
kill -TERM "$pid"
sleep 0.5
code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/completions" -d '{"prompt": "x"}' || true)"
[[ "$code" == 503 || "$code" == 000 ]] || fail "a request during the drain got HTTP $code"
wait "$curl_pid" || fail "the running request failed during the drain"
grep -q '"finish_reason":"length"' "$work/drain.json" || fail "drained request: $(cat "$work/drain.json")"
stop_server "$work/smol.err"
echo "ok: SIGTERM finished the running request (new ones: HTTP $code) and exited 0"

# ---- 2. Load on a tiny model.
"$python" "$testdata/make_tiny_chat_model.py" "$model" "$work/tiny" >/dev/null 2>&1 || fail "tiny model"
"$plan" --quiet --model "$work/tiny" --max-memory cpu=4GiB --dtype f32 --batch 8 --seq-len 128 \
  -o "$work/tiny.bplan" >/dev/null || fail "plan tiny"
start_server "$work/tiny.bplan" "$work/tiny" "$work/tiny.err"
"$python" "$testdata/serve_client.py" load "$port" 32 200 || fail "load clients"
stop_server "$work/tiny.err"
max_rows="$(sed -n 's/.*at most \([0-9]*\) rows per step.*/\1/p' "$work/tiny.err")"
echo "server: $(grep 'stopped after' "$work/tiny.err")"
[[ "${max_rows:-0}" -gt 1 ]] || fail "concurrent requests never shared a step"
echo PASS
