#!/usr/bin/env bash
# The run tool end to end: plans a tiny llama (made with transformers) for CPU compute with disk-tier blocks,
# generates with greedy decoding and with sampling, and checks the printed tokens against transformers' greedy
# tokens, the timing lines, the Chrome trace and the error exit codes.
set -euo pipefail

runfiles="${TEST_SRCDIR:-$0.runfiles}"
find_runfile() {
  for p in "$runfiles/bigplan/$1" "$runfiles/$1"; do
    [[ -e "$p" ]] && { echo "$p"; return; }
  done
  echo "missing runfile $1" >&2
  exit 1
}
plan="$(find_runfile tools/plan)"
run="$(find_runfile tools/run)"
python="${BIGPLAN_PYTHON:-$(find_runfile torch/python3.sh)}"
gen="$(find_runfile tests/reference/make_tiny_models.py)"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

if [[ -n "${BIGPLAN_TINY_MODELS:-}" ]]; then
  model="$BIGPLAN_TINY_MODELS/llama"
else
  model="$tmp/llama"
  "$python" "$gen" --out "$model" --family llama >"$tmp/gen.log" 2>&1 || { cat "$tmp/gen.log"; exit 1; }
fi

# Prompt and expected greedy tokens of row 0, from the reference file.
read -r prompt want < <("$python" - "$model/reference.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file
ref = load_file(sys.argv[1])
print(",".join(str(int(t)) for t in ref["input_ids"][0]), " ".join(str(int(t)) for t in ref["generated"][0]))
PY
)
steps=$(wc -w <<<"$want")

# CPU compute; decoder layers and lm_head read from disk (an explicit device map: for a model this small the
# planner would keep everything resident).
cat >"$tmp/map.json" <<'JSON'
{"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "disk", "model.norm": "cpu",
 "lm_head": "disk"}
JSON
"$plan" --quiet --model "$model" --max-memory cpu=1GiB --device-map "$tmp/map.json" --dtype fp32 --batch 2 \
  --seq-len 32 -o "$tmp/p.bplan"

out="$("$run" --quiet --plan "$tmp/p.bplan" --model "$model" --prompt-ids "$prompt" --batch 2 \
        --max-new-tokens "$steps" --cpu --trace "$tmp/trace.json" --repeat 2)"
echo "$out"
grep -q "^tokens\[0\]: $want\$" <<<"$out" || { echo "FAIL: expected tokens[0]: $want"; exit 1; }
grep -q "^tokens\[1\]: $want\$" <<<"$out" || { echo "FAIL: expected tokens[1]: $want"; exit 1; }
for line in "^load: " "^time to first token: " "^decode: .* ms/token" "^streamed per forward: " "^mode: cpu" "^run 2:"; do
  grep -q "$line" <<<"$out" || { echo "FAIL: no line matching '$line'"; exit 1; }
done

"$python" - "$tmp/trace.json" <<'PY'
import json, sys
trace = json.load(open(sys.argv[1]))
events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
tracks = {e["args"]["name"] for e in trace["traceEvents"] if e.get("ph") == "M" and e["name"] == "thread_name"}
assert events, "no events"
assert "compute" in tracks, tracks
assert all(e["dur"] >= 0 and "ts" in e for e in events)
compute = [e for e in events if e["name"].startswith("model.")]
assert compute, "no compute events"
print(f"trace: {len(events)} events on tracks {sorted(tracks)}")
PY

# Sampling is reproducible with a seed.
a="$("$run" --quiet --plan "$tmp/p.bplan" --model "$model" --prompt-ids 1,2,3 --max-new-tokens 6 --cpu \
      --temperature 0.9 --top-k 40 --top-p 0.9 --seed 11 | grep '^tokens')"
b="$("$run" --quiet --plan "$tmp/p.bplan" --model "$model" --prompt-ids 1,2,3 --max-new-tokens 6 --cpu \
      --temperature 0.9 --top-k 40 --top-p 0.9 --seed 11 | grep '^tokens')"
[[ "$a" == "$b" ]] || { echo "FAIL: sampling with one seed differs: $a vs $b"; exit 1; }

# Errors: bad flags exit 2, a token outside the vocabulary exits 2, a missing plan exits 1.
set +e
"$run" --plan "$tmp/p.bplan" --model "$model" --prompt-ids 1,x >/dev/null 2>&1; rc=$?
[[ $rc -eq 2 ]] || { echo "FAIL: bad --prompt-ids exited $rc"; exit 1; }
err="$("$run" --quiet --plan "$tmp/p.bplan" --model "$model" --prompt-ids 1,99999 --cpu 2>&1 >/dev/null)"; rc=$?
[[ $rc -eq 2 && "$err" == *"token id 99999"* ]] || { echo "FAIL: out-of-vocab exited $rc: $err"; exit 1; }
"$run" --quiet --plan "$tmp/missing.bplan" --model "$model" --prompt-ids 1 >/dev/null 2>&1; rc=$?
[[ $rc -eq 1 ]] || { echo "FAIL: missing plan exited $rc"; exit 1; }
# Numbers that do not fit, or make no sense, are bad command lines (never wrapped, never NaN sampling, never an
# allocation of billions of rows).
expect_usage() {  # expect_usage NEEDLE FLAGS...
  local needle=$1; shift
  err="$("$run" --quiet --plan "$tmp/p.bplan" --model "$model" --prompt-ids 1,2 --cpu "$@" 2>&1 >/dev/null)"; rc=$?
  [[ $rc -eq 2 && "$err" == *"$needle"* ]] || { echo "FAIL: $* exited $rc: $err"; exit 1; }
}
expect_usage "--max-new-tokens: 4294967297 is too large" --max-new-tokens 4294967297
expect_usage "--temperature: expected a finite number" --temperature -1
expect_usage "--temperature: expected a finite number" --temperature nan
expect_usage "--top-p: expected a finite number" --top-p nan
expect_usage "--top-p: expected a number in (0, 1]" --top-p 2
expect_usage "--batch 8589934592 exceeds the plan's max_batch 2" --batch 8589934592
# A plan damaged after it was written is refused, naming the file.
cp "$tmp/p.bplan" "$tmp/damaged.bplan"
size=$(stat -c %s "$tmp/damaged.bplan")
printf '\x5a' | dd of="$tmp/damaged.bplan" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
cmp -s "$tmp/p.bplan" "$tmp/damaged.bplan" && printf '\x5b' | dd of="$tmp/damaged.bplan" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
err="$("$run" --quiet --plan "$tmp/damaged.bplan" --model "$model" --prompt-ids 1 --cpu 2>&1 >/dev/null)"; rc=$?
[[ $rc -eq 1 && "$err" == *"damaged.bplan"* ]] || { echo "FAIL: damaged plan exited $rc: $err"; exit 1; }
set -e
echo PASS
