#!/usr/bin/env bash
# End to end: real Hugging Face checkpoints saved by transformers (tiny random Llama, tied Llama, GPT-J, GPT-2)
# are planned by `plan --model DIR -o FILE` with the auto strategy and with a device map that streams blocks
# from cpu and disk; every plan is then read back by `inspect`. Also: command-line and input errors give the
# documented exit codes and named messages.
set -euo pipefail

runfiles="${RUNFILES_DIR:-${TEST_SRCDIR:-$0.runfiles}}"
python="$runfiles/torch/python3.sh"
plan="$runfiles/bigplan/tools/plan"
inspect="$runfiles/bigplan/tools/inspect"
work="${TEST_TMPDIR:-$(mktemp -d)}"
unset BUILD_WORKING_DIRECTORY
fail() { echo "FAIL: $*" >&2; exit 1; }

"$python" "$runfiles/bigplan/tools/testdata/make_tiny_hf.py" "$work/models" >/dev/null 2>&1 \
  || fail "could not make the tiny models"

for m in llama llama-tied gptj gpt2; do
  dir="$work/models/$m"
  "$plan" --quiet --model "$dir" --max-memory "cuda:0=1GiB,cpu=1GiB" --seq-len 128 -o "$work/$m.bplan" \
    --export-device-map "$work/$m.map.json" > "$work/$m.txt" || fail "plan $m"
  grep -q "checkpoint: 1 shard(s)" "$work/$m.txt" || fail "$m: plan did not use the checkpoint"
  "$inspect" "$work/$m.bplan" > "$work/$m.inspect" || fail "inspect $m"
  "$inspect" --json "$work/$m.bplan" > "$work/$m.json" || fail "inspect --json $m"
  "$python" -c "import json,sys; p=json.load(open(sys.argv[1])); assert p['version'] == 7 and p['blocks'] and 'streams' in p and 'rope' in p['config'] and all('block_kind' in b for b in p['blocks'])" \
    "$work/$m.json" || fail "$m: inspect --json is not the plan"
  # Stream every decoder layer: alternate cpu and disk.
  "$python" - "$work/$m.map.json" "$work/$m.stream.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
layers = [k for k in m if k.rsplit(".", 1)[-1].isdigit()]
for i, k in enumerate(layers):
    m[k] = "cpu" if i % 2 == 0 else "disk"
json.dump(m, open(sys.argv[2], "w"))
PY
  "$plan" --quiet --model "$dir" --max-memory "cuda:0=1GiB,cpu=1GiB" --seq-len 128 \
    --device-map "$work/$m.stream.json" -o "$work/$m.stream.bplan" > "$work/$m.stream.txt" || fail "plan $m streamed"
  grep -q "disk (streamed)" "$work/$m.stream.txt" || fail "$m: nothing streamed from disk"
  "$inspect" "$work/$m.stream.bplan" > "$work/$m.stream.inspect" || fail "inspect $m streamed"
  grep -q " from disk +" "$work/$m.stream.inspect" || fail "$m: no stream unit from disk in the plan"
  "$inspect" --json "$work/$m.stream.bplan" > "$work/$m.stream.json" || fail "inspect --json $m streamed"
  "$python" -c "import json,sys; p=json.load(open(sys.argv[1])); s=p['streams'][0]; assert s['device'] == 0 and s['disk_units'] > 0 and s['unit_count'] == len(s['units'])" \
    "$work/$m.stream.json" || fail "$m: inspect --json lacks the stream"
  "$inspect" --diff "$work/$m.bplan" "$work/$m.stream.bplan" > "$work/$m.diff" || fail "inspect --diff $m"
  grep -q "placement differences: [1-9]" "$work/$m.diff" || fail "$m: diff shows no placement change"
done

expect_exit() {  # expect_exit CODE NEEDLE COMMAND...
  local code=$1 needle=$2; shift 2
  set +e
  "$@" > "$work/out.txt" 2> "$work/err.txt"
  local got=$?
  set -e
  [[ $got == "$code" ]] || fail "$* exited $got, expected $code: $(cat "$work/err.txt")"
  grep -q -- "$needle" "$work/err.txt" || fail "$*: stderr lacks \"$needle\": $(cat "$work/err.txt")"
}
expect_exit 2 'unknown flag "--frobnicate"' "$plan" --frobnicate
expect_exit 2 "usage: plan" "$plan" --batch
expect_exit 2 "--max-memory" "$plan" --model "$work/models/llama" --max-memory "cuda:0=lots"
expect_exit 1 "infeasible" "$plan" --quiet --model "$work/models/llama" --max-memory "cuda:0=100MiB"
expect_exit 1 "not_there" "$plan" --quiet --model "$work/not_there"
expect_exit 2 "--auto-candidates" "$plan" --quiet --model "$work/models/llama" --auto-candidates BX
expect_exit 2 "--expert-prefetch" "$plan" --quiet --model "$work/models/llama" --expert-prefetch two
expect_exit 2 "unknown memory algorithm" "$plan" --quiet --model "$work/models/llama" --memory-algorithm best
# A shard cut short is reported, naming the file.
cp -r "$work/models/llama" "$work/broken"
truncate -s 1000 "$work/broken/model.safetensors"
expect_exit 1 "model.safetensors" "$plan" --quiet --model "$work/broken"
# Bad config.json content is bad input (exit 1) naming the file and field; an absurd layer count is refused at
# once instead of building a billion layers.
cp -r "$work/models/llama" "$work/badcfg"
"$python" - "$work/badcfg/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); del c["num_attention_heads"]; json.dump(c, open(sys.argv[1], "w"))
PY
expect_exit 1 'config.json: field "num_attention_heads": missing' "$plan" --quiet --model "$work/badcfg"
"$python" - "$work/badcfg/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["num_attention_heads"] = 4; c["num_hidden_layers"] = 1000000000
json.dump(c, open(sys.argv[1], "w"))
PY
expect_exit 1 "1000000000 decoder layers exceed the limit" timeout 60 "$plan" --quiet --model "$work/badcfg"
# Writing into a directory fails, naming it; a full device is reported, not announced as written.
expect_exit 1 "is a directory" "$plan" --quiet --model "$work/models/llama" --max-memory "cuda:0=1GiB,cpu=1GiB" \
  --seq-len 128 -o "$work"
if [[ -c /dev/full ]]; then
  expect_exit 1 "/dev/full: write failed" "$plan" --quiet --model "$work/models/llama" \
    --max-memory "cuda:0=1GiB,cpu=1GiB" --seq-len 128 -o /dev/full
  [[ -c /dev/full ]] || fail "plan -o /dev/full replaced the device with a file"
fi
# Not a plan, and a damaged plan.
expect_exit 1 "not a bigplan plan" "$inspect" "$work/llama.map.json"
head -c 200 "$work/llama.bplan" > "$work/cut.bplan"
expect_exit 1 "corrupt" "$inspect" "$work/cut.bplan"
cp "$work/llama.bplan" "$work/flipped.bplan"
"$python" - "$work/flipped.bplan" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 3] ^= 0x04; open(p, "wb").write(b)
PY
expect_exit 1 "flipped.bplan" "$inspect" "$work/flipped.bplan"
expect_exit 2 "usage: inspect" "$inspect" --diff "$work/llama.bplan"
"$plan" --help > "$work/help.txt"
grep -q -- "--export-device-map" "$work/help.txt" || fail "--help lacks a flag"
echo "PASS"
