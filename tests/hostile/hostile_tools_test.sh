#!/usr/bin/env bash
# Hostile inputs against the tools (plan, inspect, run), run as subprocesses under a time limit and an address-space
# limit (ulimit -v). Every case must end in a clear error naming the file and the problem, within 2 s of CPU time,
# without a signal, or in the right answer:
#   named pipes (FIFOs) and /dev/zero for shards, config.json, the index, plans, device maps and profiles;
#   20 GiB sparse files for the same; JSON nested 100k levels deep; index entries that leave the model directory
#   (../../etc/passwd, an absolute path, a valid shard outside the directory: refused, and no byte of the target
#   is printed); a shard header of 100k tensors; config keys that change the math and that the executor would
#   refuse (refused by plan, naming config.json); an integer weight (naming its shard); a run shape whose
#   activation estimate overflows 64 bits; --top-p 1e-300 (keeps the most likely token: the greedy answer).
# (A shard truncated under a running executor: shard_truncation_test.)
set -euo pipefail

runfiles="${RUNFILES_DIR:-${TEST_SRCDIR:-$0.runfiles}}"
python="$runfiles/torch/python3.sh"
plan="$runfiles/bigplan/tools/plan"
inspect="$runfiles/bigplan/tools/inspect"
run="$runfiles/bigplan/tools/run"
work="${TEST_TMPDIR:-$(mktemp -d)}/hostile"
unset BUILD_WORKING_DIRECTORY
rm -rf "$work"
mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

readonly LIMIT_S=2  # CPU seconds of the tool's own work, after its start-up (measured below with --help)
readonly VMEM_KB=$((4 * 1024 * 1024))       # plan, inspect: 4 GiB of address space
readonly VMEM_RUN_KB=$((24 * 1024 * 1024))  # run (LibTorch maps large libraries)

"$python" "$runfiles/bigplan/tests/hostile/make_inputs.py" "$work" || fail "could not make the inputs"
tiny="$work/tiny"
"$plan" --quiet --model "$tiny" --max-memory cpu=1GiB --seq-len 32 -o "$work/tiny.bplan" > /dev/null 2>&1 \
  || fail "plan tiny"
# Times are the CPU time (user + system) the tool spends, so that a busy machine does not fail the suite; the wall
# clock is capped at 30 s by `timeout` (a hang). Start-up (loading LibTorch's libraries dominates `run`) is measured with
# --help and the limit applies on top of it.
TIMEFORMAT='%R %U %S'
cpu_ms_of() {  # cpu_ms_of TIMEFILE -> milliseconds of user + system time
  awk '{ printf "%d", ($2 + $3) * 1000 }' "$1"
}
startup_ms() {
  { time "$@" > /dev/null 2>&1; } 2> "$work/startup_time.txt" || true
  cpu_ms_of "$work/startup_time.txt"
}
plan_startup_ms=$(startup_ms "$plan" --help)
run_startup_ms=$(startup_ms "$run" --help)
echo "start-up CPU time: plan $plan_startup_ms ms, run $run_startup_ms ms (--help)"

cases=0
# expect_error NAME NEEDLE... -- COMMAND...   (LIMIT_MS=... overrides the limit for one case)
expect_error() {
  local name=$1; shift
  local needles=()
  while [[ $1 != "--" ]]; do needles+=("$1"); shift; done
  shift
  local vmem=$VMEM_KB startup=$plan_startup_ms limit_ms=${LIMIT_MS:-$((LIMIT_S * 1000))}
  if [[ $1 == "$run" ]]; then vmem=$VMEM_RUN_KB; startup=$run_startup_ms; fi
  local rc
  set +e
  { time (ulimit -v "$vmem"; timeout -s KILL 30 "$@" > "$work/out.txt" 2> "$work/err.txt"); } 2> "$work/time.txt"
  rc=$?
  set -e
  local ms=$(($(cpu_ms_of "$work/time.txt") - startup)) wall
  wall=$(awk '{ printf "%d", $1 * 1000 }' "$work/time.txt")
  [[ $rc == 1 || $rc == 2 ]] || fail "$name: exit status $rc (expected an error, 1 or 2): $(head -c 600 "$work/err.txt")"
  ((ms <= limit_ms)) || fail "$name: took $ms ms of CPU time after start-up (limit $limit_ms ms)"
  for n in "${needles[@]}"; do
    grep -qF -- "$n" "$work/err.txt" || fail "$name: stderr lacks \"$n\": $(head -c 600 "$work/err.txt")"
  done
  if grep -q "root:" "$work/err.txt"; then fail "$name: the error prints the target's bytes"; fi
  printf '%-22s exit %d, cpu %5d ms (+start-up), wall %5d ms: ...%s\n' "$name" "$rc" "$ms" "$wall" \
    "$(tr '\n' ' ' < "$work/err.txt" | tail -c 150)"
  cases=$((cases + 1))
}

# A copy of the tiny model (symlinked shards) with one file replaced by what `make` creates.
variant() {  # variant NAME FILE MAKE...
  local name=$1 file=$2; shift 2
  local d="$work/$name"
  mkdir -p "$d"
  for f in "$tiny"/*; do ln -sf "$f" "$d/$(basename "$f")"; done
  rm -f "$d/$file"
  "$@" "$d/$file"
  echo "$d"
}
mkfifo_at() { mkfifo "$1"; }
zero_at() { ln -s /dev/zero "$1"; }
sparse_at() { truncate -s 20G "$1"; }
shard=model-00001-of-00002.safetensors

# ---- named pipes: refused before any blocking open ----
d=$(variant fifo_shard "$shard" mkfifo_at)
expect_error fifo_shard "$shard" "FIFO" -- "$plan" --quiet --model "$d" --max-memory cpu=1GiB --seq-len 32
d=$(variant fifo_config config.json mkfifo_at)
expect_error fifo_config "config.json" "FIFO" -- "$plan" --quiet --model "$d" --max-memory cpu=1GiB --seq-len 32
d=$(variant fifo_index model.safetensors.index.json mkfifo_at)
expect_error fifo_index "model.safetensors.index.json" "FIFO" -- "$plan" --quiet --model "$d" --max-memory cpu=1GiB --seq-len 32
mkfifo "$work/fifo.bplan" "$work/fifo_map.json" "$work/fifo_profile.json"
expect_error fifo_plan_inspect "fifo.bplan" "FIFO" -- "$inspect" "$work/fifo.bplan"
expect_error fifo_plan_run "fifo.bplan" "FIFO" -- "$run" --plan "$work/fifo.bplan" --model "$tiny" --cpu --prompt-ids 1,2
expect_error fifo_device_map "fifo_map.json" "FIFO" -- \
  "$plan" --quiet --model "$tiny" --max-memory cpu=1GiB --seq-len 32 --strategy explicit --device-map "$work/fifo_map.json"
expect_error fifo_profile "fifo_profile.json" "FIFO" -- \
  "$plan" --quiet --model "$tiny" --max-memory cpu=1GiB --seq-len 32 --profile "$work/fifo_profile.json"
d=$(variant fifo_shard_run "$shard" mkfifo_at)
expect_error fifo_shard_run "$shard" "FIFO" -- "$run" --plan "$work/tiny.bplan" --model "$d" --cpu --prompt-ids 1,2

# ---- /dev/zero: refused, never read ----
d=$(variant zero_config config.json zero_at)
expect_error zero_config "config.json" "character device" -- "$plan" --quiet --model "$d" --max-memory cpu=1GiB --seq-len 32
expect_error zero_plan_inspect "/dev/zero" "character device" -- "$inspect" /dev/zero
expect_error zero_plan_run "/dev/zero" "character device" -- "$run" --plan /dev/zero --model "$tiny" --cpu --prompt-ids 1
expect_error zero_profile "/dev/zero" "character device" -- \
  "$plan" --quiet --model "$tiny" --max-memory cpu=1GiB --seq-len 32 --profile /dev/zero
expect_error zero_device_map "/dev/zero" "character device" -- \
  "$plan" --quiet --model "$tiny" --max-memory cpu=1GiB --seq-len 32 --strategy explicit --device-map /dev/zero
d=$(variant zero_shard "$shard" zero_at)
expect_error zero_shard "$shard" "character device" -- "$plan" --quiet --model "$d" --max-memory cpu=1GiB --seq-len 32

# ---- 20 GiB sparse files: refused by size before reading ----
d=$(variant sparse_config config.json sparse_at)
expect_error sparse_config "config.json: 21474836480 bytes is more than the limit" -- \
  "$plan" --quiet --model "$d" --max-memory cpu=1GiB --seq-len 32
d=$(variant sparse_index model.safetensors.index.json sparse_at)
expect_error sparse_index "model.safetensors.index.json: 21474836480 bytes is more than the limit" -- \
  "$plan" --quiet --model "$d" --max-memory cpu=1GiB --seq-len 32
truncate -s 20G "$work/sparse.bplan" "$work/sparse_map.json" "$work/sparse_profile.json"
expect_error sparse_plan_inspect "sparse.bplan: 21474836480 bytes is more than the limit" -- "$inspect" "$work/sparse.bplan"
expect_error sparse_plan_run "sparse.bplan: 21474836480 bytes is more than the limit" -- \
  "$run" --plan "$work/sparse.bplan" --model "$tiny" --cpu --prompt-ids 1
expect_error sparse_device_map "sparse_map.json: 21474836480 bytes" -- \
  "$plan" --quiet --model "$tiny" --max-memory cpu=1GiB --seq-len 32 --strategy explicit --device-map "$work/sparse_map.json"
expect_error sparse_profile "sparse_profile.json: 21474836480 bytes" -- \
  "$plan" --quiet --model "$tiny" --max-memory cpu=1GiB --seq-len 32 --profile "$work/sparse_profile.json"
d=$(variant sparse_shard "$shard" sparse_at)
expect_error sparse_shard "$shard" -- "$plan" --quiet --model "$d" --max-memory cpu=1GiB --seq-len 32

# ---- JSON nested 100k levels deep ----
expect_error deep_config "deep_config/config.json" "nested deeper than" -- \
  "$plan" --quiet --model "$work/deep_config" --max-memory cpu=1GiB --seq-len 32
expect_error deep_index "model.safetensors.index.json" "nested deeper than" -- \
  "$plan" --quiet --model "$work/deep_index" --max-memory cpu=1GiB --seq-len 32
expect_error deep_device_map "deep_map.json" "nested deeper than" -- \
  "$plan" --quiet --model "$tiny" --max-memory cpu=1GiB --seq-len 32 --strategy explicit --device-map "$work/deep_map.json"
expect_error deep_profile "deep_profile.json" "nested deeper than" -- \
  "$plan" --quiet --model "$tiny" --max-memory cpu=1GiB --seq-len 32 --profile "$work/deep_profile.json"

# ---- index entries that leave the model directory ----
expect_error trav_passwd "trav_passwd/model.safetensors.index.json" "leaves the model directory" -- \
  "$plan" --quiet --model "$work/trav_passwd" --max-memory cpu=1GiB --seq-len 32
expect_error trav_absolute "trav_abs/model.safetensors.index.json" "is an absolute path" -- \
  "$plan" --quiet --model "$work/trav_abs" --max-memory cpu=1GiB --seq-len 32
expect_error trav_valid_outside "trav_outside/model.safetensors.index.json" "leaves the model directory" -- \
  "$plan" --quiet --model "$work/trav_outside" --max-memory cpu=1GiB --seq-len 32
expect_error trav_run "leaves the model directory" -- \
  "$run" --plan "$work/tiny.bplan" --model "$work/trav_outside" --cpu --prompt-ids 1

# ---- a header of 100k tensors: parsed in time (the tensors are not the model's: a mismatch, named) ----
# 100k tensors go through the header parser, the checkpoint index, the import and the validation: linear, but the
# fastbuild (-O0) tools of `bazel test` take ~3.5 s of CPU for it; a -c opt build takes well under 2 s.
LIMIT_MS=8000 expect_error header_100k_tensors "many_tensors" "problems" -- \
  "$plan" --quiet --model "$work/many_tensors" --max-memory cpu=1GiB --seq-len 32

# ---- config keys that change the math: refused by plan, naming config.json ----
expect_error rope_factor_zero "rope_zero/config.json" "'factor' must be positive" -- \
  "$plan" --quiet --model "$work/rope_zero" --max-memory cpu=1GiB --seq-len 32
expect_error rope_llama3_equal "rope_llama3_equal/config.json" "high_freq_factor equals low_freq_factor" -- \
  "$plan" --quiet --model "$work/rope_llama3_equal" --max-memory cpu=1GiB --seq-len 32
expect_error rope_longrope "rope_longrope/config.json" "longrope needs 'short_factor'" -- \
  "$plan" --quiet --model "$work/rope_longrope" --max-memory cpu=1GiB --seq-len 32
expect_error activation_unknown "act_unknown/config.json" "\"quick_gelu\" is not supported" -- \
  "$plan" --quiet --model "$work/act_unknown" --max-memory cpu=1GiB --seq-len 32
expect_error partial_rotary "partial_rotary/config.json" "partial_rotary_factor" -- \
  "$plan" --quiet --model "$work/partial_rotary" --max-memory cpu=1GiB --seq-len 32
expect_error quantized "quantized/config.json" "quantization_config" -- \
  "$plan" --quiet --model "$work/quantized" --max-memory cpu=1GiB --seq-len 32
expect_error integer_weight "int_weight/model-0000" "model.layers.1.mlp.up_proj.weight\" is I32" -- \
  "$plan" --quiet --model "$work/int_weight" --max-memory cpu=1GiB --seq-len 32

# ---- arithmetic that would wrap around 64 bits ----
expect_error overflow_run_shape "the KV cache per layer (2 x batch x seq x kv_heads x head_dim x dtype bytes) overflow 64 bits" -- \
  "$plan" --quiet --model "$work/long_context" --max-memory cpu=1GiB --batch 999999999 --seq-len 999999999
# Past 1 PiB but within 64 bits: infeasible, with the KV cache and activations it would need (the scores are one
# chunk's, not seq^2).
expect_error huge_run_shape "cpu needs 52.62 PiB (disk staging 21.00 KiB + KV 14.90 PiB + activations 37.72 PiB)" -- \
  "$plan" --quiet --model "$work/long_context" --max-memory cpu=1GiB --batch 65536 --seq-len 999999999

# ---- sampling parameters are doubles: --top-p 1e-300 keeps only the most likely token ----
expect_error top_p_zero "--top-p" -- "$run" --plan "$work/tiny.bplan" --model "$tiny" --cpu --prompt-ids 1 --top-p 0
(ulimit -v "$VMEM_RUN_KB"; timeout 60 "$run" --plan "$work/tiny.bplan" --model "$tiny" --cpu --prompt-ids 3,1,4 \
  --max-new-tokens 8) > "$work/greedy.txt" 2>&1 || fail "greedy run: $(cat "$work/greedy.txt")"
(ulimit -v "$VMEM_RUN_KB"; timeout 60 "$run" --plan "$work/tiny.bplan" --model "$tiny" --cpu --prompt-ids 3,1,4 \
  --max-new-tokens 8 --temperature 1 --top-p 1e-300 --seed 11) > "$work/top_p.txt" 2>&1 \
  || fail "--top-p 1e-300 run: $(cat "$work/top_p.txt")"
greedy=$(grep '^tokens\[0\]' "$work/greedy.txt") || fail "no tokens in $(cat "$work/greedy.txt")"
top_p=$(grep '^tokens\[0\]' "$work/top_p.txt") || fail "no tokens in $(cat "$work/top_p.txt")"
[[ "$greedy" == "$top_p" ]] || fail "--top-p 1e-300 sampled \"$top_p\", greedy gives \"$greedy\""
(ulimit -v "$VMEM_RUN_KB"; timeout 60 "$run" --plan "$work/tiny.bplan" --model "$tiny" --cpu --prompt-ids 3,1,4 \
  --max-new-tokens 8 --temperature 1 --seed 11) > "$work/sampled.txt" 2>&1 || fail "sampled run"
echo "top-p 1e-300: $top_p (greedy: $greedy; plain sampling: $(grep '^tokens\[0\]' "$work/sampled.txt"))"

echo "PASS: $cases hostile cases, each an error naming the file within ${LIMIT_S} s; top-p 1e-300 is greedy"
