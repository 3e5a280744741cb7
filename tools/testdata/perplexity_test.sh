#!/usr/bin/env bash
# Perplexity of SmolLM2-135M-Instruct (fp32 plan, CPU) over the first 512 tokens of the GPL-3 text in windows of
# 256 must equal transformers' (benchmarks/perplexity_hf.py, float32) within 0.5%, over the same number of tokens;
# greedy agreement with transformers' argmaxes (through the argmax file) must be near 1; a run agrees with itself
# exactly. Each weight format (plan --weights) on the same tokens: int8 and fp8 per row, int4 in groups of 32 (the
# grid this GGUF-converted checkpoint was quantized on) stay within a few percent of the unquantized perplexity and
# agree greedily on most positions. Then the errors: missing, empty and unreadable texts, window < 2, a window past the plan's sequence
# length, a reference argmax file of other tokens or another window.
set -euo pipefail

runfiles="${RUNFILES_DIR:-${TEST_SRCDIR:-$0.runfiles}}"
python="$runfiles/torch/python3.sh"
plan="$runfiles/bigplan/tools/plan"
ppl="$runfiles/bigplan/tools/perplexity"
oracle="$runfiles/bigplan/benchmarks/perplexity_hf.py"
work="${TEST_TMPDIR:-$(mktemp -d)}"
unset BUILD_WORKING_DIRECTORY
fail() { echo "FAIL: $*" >&2; exit 1; }

text=/usr/share/common-licenses/GPL-3
[[ -r "$text" ]] || fail "$text is missing (Debian's base-files package provides it)"

home="$(getent passwd "$(id -u)" | cut -d: -f6)"
model="${BIGPLAN_MODELS:-$home/.cache/bigplan/models}/smollm2-135m-instruct"
if [[ ! -f "$model/.bigplan-converted" ]]; then
  model="$work/smollm2"
  "$python" "$runfiles/bigplan/tools/make_smollm2.py" --out "$model" >/dev/null 2>&1 || fail "could not convert SmolLM2"
fi

"$plan" --quiet --model "$model" --max-memory cpu=4GiB --dtype f32 --seq-len 256 -o "$work/smol.bplan" >/dev/null 2>&1 \
  || fail "plan SmolLM2"

common=(--text "$text" --max-tokens 512 --window 256)
"$ppl" --quiet --plan "$work/smol.bplan" --model "$model" "${common[@]}" --argmax-out "$work/ours.txt" \
  --json "$work/ours.json" > "$work/ours.out" 2> "$work/ours.err" || fail "perplexity: $(cat "$work/ours.err")"
cat "$work/ours.out"
"$python" "$oracle" --quiet --model "$model" "${common[@]}" --dtype float32 --device cpu --argmax-out "$work/hf.txt" \
  --json "$work/hf.json" > "$work/hf.out" 2> "$work/hf.err" || fail "perplexity_hf.py: $(tail -5 "$work/hf.err")"
cat "$work/hf.out"

"$python" - "$work/ours.json" "$work/hf.json" <<'PY' || fail "bigplan and transformers disagree"
import json, sys
ours, hf = (json.load(open(p)) for p in sys.argv[1:3])
print(f"bigplan: {ours['tokens']} tokens, ppl {ours['ppl']:.4f} in {ours['seconds']:.2f} s; "
      f"transformers: {hf['tokens']} tokens, ppl {hf['ppl']:.4f} in {hf['seconds']:.2f} s")
assert ours["tokens"] == hf["tokens"] == 510, (ours["tokens"], hf["tokens"])
assert ours["windows"] == hf["windows"] == 2, (ours["windows"], hf["windows"])
rel = abs(ours["ppl"] - hf["ppl"]) / hf["ppl"]
assert rel < 0.005, f"perplexities differ by {rel:.2%}"
assert 5 < ours["ppl"] < 100, ours["ppl"]  # a real model on English text, not a uniform guess (49152)
PY

# Greedy agreement: with transformers' argmaxes (same tokens: the token hashes match), and with itself.
"$ppl" --quiet --plan "$work/smol.bplan" --model "$model" "${common[@]}" --reference-argmax "$work/hf.txt" \
  --json "$work/agree.json" > "$work/agree.out" 2>&1 || fail "--reference-argmax hf: $(cat "$work/agree.out")"
grep "greedy agreement" "$work/agree.out"
"$python" -c 'import json,sys; a=json.load(open(sys.argv[1]))["agreement"]; assert a >= 0.99, a' "$work/agree.json" \
  || fail "greedy agreement with transformers below 0.99"
"$ppl" --quiet --plan "$work/smol.bplan" --model "$model" "${common[@]}" --reference-argmax "$work/ours.txt" \
  > "$work/self.out" 2>&1 || fail "--reference-argmax self: $(cat "$work/self.out")"
grep -q "^greedy agreement: 1.000000" "$work/self.out" || fail "a run does not agree with itself: $(cat "$work/self.out")"

# Weight formats: perplexity and greedy agreement against the unquantized plan (measured on the whole text in
# benchmarks/RESULTS.md: int8 +0.4%, fp8 +1.0%, int4 groups of 32 +0.1%).
for spec in "int8" "fp8" "int4 --weights-group 32"; do
  name="${spec%% *}"
  # shellcheck disable=SC2086
  "$plan" --quiet --model "$model" --max-memory cpu=4GiB --dtype f32 --seq-len 256 --weights $spec \
    -o "$work/$name.bplan" >/dev/null 2>&1 || fail "plan --weights $spec"
  "$ppl" --quiet --plan "$work/$name.bplan" --model "$model" "${common[@]}" --reference-argmax "$work/ours.txt" \
    --json "$work/$name.json" > "$work/$name.out" 2>&1 || fail "perplexity --weights $spec: $(cat "$work/$name.out")"
  "$python" - "$work/ours.json" "$work/$name.json" "$spec" <<'PY' || fail "--weights $spec is too far from unquantized"
import json, sys
base, q = (json.load(open(p)) for p in sys.argv[1:3])
rel = q["ppl"] / base["ppl"] - 1
print(f"--weights {sys.argv[3]}: ppl {q['ppl']:.4f} ({rel:+.2%}), greedy agreement {q['agreement']:.3f}")
assert q["weights"] == sys.argv[3].split()[0], q["weights"]
assert abs(rel) < 0.03, rel
assert q["agreement"] >= 0.85, q["agreement"]
PY
done

# Errors: exit status and a message naming the file or the flag.
expect_error() {  # expect_error STATUS PATTERN ARGS...
  local want="$1" pattern="$2"
  shift 2
  set +e
  "$ppl" --quiet --plan "$work/smol.bplan" --model "$model" "$@" > "$work/err.out" 2>&1
  local got=$?
  set -e
  [[ "$got" == "$want" ]] || fail "perplexity $*: exit $got, want $want: $(cat "$work/err.out")"
  grep -q -- "$pattern" "$work/err.out" || fail "perplexity $*: no \"$pattern\" in: $(cat "$work/err.out")"
}
: > "$work/empty.txt"
mkdir -p "$work/adir"
expect_error 1 "$work/missing.txt" --text "$work/missing.txt" --window 256
expect_error 2 "$work/empty.txt: the text file is empty" --text "$work/empty.txt" --window 256
expect_error 1 "$work/adir" --text "$work/adir" --window 256
expect_error 2 "at least 2 tokens" --text "$text" --window 1
expect_error 2 "longer than the plan's max sequence length 256" --text "$text" --window 512
expect_error 2 "plan --seq-len 512" --text "$text" --window 512
expect_error 1 "window 256 there, 128 here" --text "$text" --max-tokens 512 --window 128 --reference-argmax "$work/hf.txt"
expect_error 1 "tokens 512 there, 300 here" --text "$text" --max-tokens 300 --window 256 --reference-argmax "$work/hf.txt"
printf 'not an argmax file\n' > "$work/bad.txt"
expect_error 1 "$work/bad.txt: not an argmax file" "${common[@]}" --reference-argmax "$work/bad.txt"
echo PASS
