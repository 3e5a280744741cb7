#!/usr/bin/env bash
# Text in, text out with a real model on the CPU: SmolLM2-135M-Instruct (tools/setup.sh converts it; converted
# here into the test's directory when the cache lacks it) is planned, and `run --prompt` / `run --chat --prompt`
# greedy output must equal transformers' greedy text; generation stops at the end-of-sequence id by default,
# goes on with --ignore-eos, and ends before a --stop string.
set -euo pipefail

runfiles="${RUNFILES_DIR:-${TEST_SRCDIR:-$0.runfiles}}"
python="$runfiles/torch/python3.sh"
plan="$runfiles/bigplan/tools/plan"
run="$runfiles/bigplan/tools/run"
work="${TEST_TMPDIR:-$(mktemp -d)}"
unset BUILD_WORKING_DIRECTORY
fail() { echo "FAIL: $*" >&2; exit 1; }

home="$(getent passwd "$(id -u)" | cut -d: -f6)"
model="${BIGPLAN_MODELS:-$home/.cache/bigplan/models}/smollm2-135m-instruct"
if [[ ! -f "$model/.bigplan-converted" ]]; then
  model="$work/smollm2"
  "$python" "$runfiles/bigplan/tools/make_smollm2.py" --out "$model" >/dev/null 2>&1 || fail "could not convert SmolLM2"
fi

"$plan" --quiet --model "$model" --max-memory cpu=4GiB --dtype f32 --seq-len 256 -o "$work/smol.bplan" >/dev/null \
  || fail "plan SmolLM2"
"$python" "$runfiles/bigplan/tools/testdata/smollm2_reference.py" "$model" "$work/ref.json" >/dev/null 2>&1 \
  || fail "transformers reference"

n=$("$python" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["cases"]))' "$work/ref.json")
for ((i = 0; i < n; i++)); do
  "$python" - "$work/ref.json" "$i" "$work/case" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["cases"][int(sys.argv[2])]
open(sys.argv[3] + ".kind", "w").write(c["kind"])
open(sys.argv[3] + ".prompt", "w", encoding="utf-8").write(c["prompt"])
open(sys.argv[3] + ".n", "w").write(str(c["max_new_tokens"]))
open(sys.argv[3] + ".want", "w", encoding="utf-8").write(c["text"] + "\n")
PY
  flags=(--prompt-file "$work/case.prompt")
  [[ "$(cat "$work/case.kind")" == chat ]] && flags+=(--chat)
  "$run" --quiet --plan "$work/smol.bplan" --model "$model" "${flags[@]}" --max-new-tokens "$(cat "$work/case.n")" \
    > "$work/case.got" 2> "$work/case.err" || fail "run case $i: $(cat "$work/case.err")"
  cmp -s "$work/case.got" "$work/case.want" \
    || fail "case $i: run printed [$(cat "$work/case.got")], transformers [$(cat "$work/case.want")]"
  echo "ok: $(cat "$work/case.prompt") -> $(cat "$work/case.got")"
done

q="What is the capital of France?"
"$run" --quiet --plan "$work/smol.bplan" --model "$model" --chat --prompt "$q" --max-new-tokens 10 --ignore-eos \
  > "$work/noeos.txt" || fail "run --ignore-eos"
grep -q "^The capital of France is Paris\..\+" <(tr '\n' ' ' < "$work/noeos.txt") \
  || fail "--ignore-eos did not go on after the answer: [$(cat "$work/noeos.txt")]"
"$run" --quiet --plan "$work/smol.bplan" --model "$model" --chat --prompt "$q" --max-new-tokens 8 --stop "Paris" \
  > "$work/stop.txt" || fail "run --stop"
[[ "$(cat "$work/stop.txt")" == "The capital of France is " ]] || fail "--stop: [$(cat "$work/stop.txt")]"

# Usage errors.
"$run" --plan "$work/smol.bplan" --model "$model" --prompt x --prompt-ids 1 >/dev/null 2>&1 && fail "both prompts accepted"
"$run" --plan "$work/smol.bplan" --model "$model" --prompt-ids 1 --stop x >/dev/null 2>&1 && fail "--stop without text accepted"
echo PASS
