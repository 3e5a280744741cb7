#!/bin/bash
# Builds every libFuzzer target (clang, -fsanitize=fuzzer,address,undefined; Bazel's toolchain here is gcc) and runs
# each for a bounded time. CI (.ci/run) calls it after `bazel test //...`; by hand, run it longer:
#
#   tests/fuzz/ci_fuzz.sh [SECONDS_PER_FUZZER (default 45, what CI uses)] [WORK_DIR (default /tmp/bigplan-fuzz)]
#
# Environment: FUZZERS="hf_config index ..." runs only those; FUZZ_JOBS (default nproc) fuzzers and compiles at once;
# CXX_FUZZ (default clang++); FUZZ_CACHE (default ~/.cache/bigplan/fuzz-obj) the object cache; FUZZ_TIMEOUT (default
# 10) seconds per input; FUZZ_OPT (default -O1) the optimization level.
#
# The targets (name, seed folder, max input length):
#   safetensors_header  the safetensors header parser; accepted headers keep every promised invariant
#   index               the checkpoint index parser; accepted shard names stay inside the model directory
#   hf_config           config.json import: errors name the file; accepted configs validate and round-trip
#   device_map          --device-map JSON (strict, depth-capped) -> placement of a small Llama
#   plan_verify         VerifyPlan + walking every field of an accepted plan + the overlap checker
#   model_desc          ModelDescription::Parse + canonical JSON round trip
#   device_profile      ParseDeviceProfile: accepted rates finite and positive, JSON round trip
# Each fuzzer is a cc_library in tests/fuzz/BUILD; the sources it needs are what `bazel query` says it depends on.
# Every source is compiled once into a content-keyed object cache (key: compiler, flags and the preprocessed source,
# so an edited source or header rebuilds it) and each fuzzer links only its own sources.
#
# Bounds per input: -timeout (seconds, wall clock), -rss_limit_mb, -malloc_limit_mb (see below). A crash, a slow
# input, an out-of-memory or a leak fails the run; libFuzzer writes the reproducer to WORK_DIR/<fuzzer>/ (crash-*,
# timeout-*, oom-*, leak-*), and the log says which file; replay it with WORK_DIR/bin/<fuzzer>_fuzzer FILE.
# The last line is "fuzz: N fuzzers, S s each, all clean" or "fuzz: ... FAILED: names". Exit status 0 when clean.
set -euo pipefail
seconds="${1:-45}"
work="${2:-/tmp/bigplan-fuzz}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
start=$(date +%s)

# name seeds max_len
table="safetensors_header safetensors 16384
index index 16384
hf_config config 16384
device_map map 4096
plan_verify plan 32768
model_desc desc 131072
device_profile profile 4096"
names="${FUZZERS:-$(cut -d' ' -f1 <<<"$table" | tr '\n' ' ')}"

# Per input, -timeout=10 (seconds of wall clock, libFuzzer's clock). The tools promise an answer within 2 s on inputs up
# to their size caps (tests/hostile checks that on uninstrumented builds). ASan + UBSan + coverage cost about 10x here
# (hf_config's corpus replayed: 0.8 ms an input at -O2 uninstrumented, 7.9 ms in the fuzzer), so 10 s instrumented
# is about 1 s native, half the promise, for an input of at most max_len bytes (16-128 KiB, far below the caps): any
# such input is a super-linear path. The inputs the fuzzers find take milliseconds, so a busy machine (the clock is
# wall time) does not come near it. Memory: ASan's quarantine and shadow make a fuzzer's peak RSS 300-500 MB;
# -rss_limit_mb=2048 stops runaway growth and -malloc_limit_mb=512 any single allocation an input of a few KiB
# should never ask for.
timeout_s="${FUZZ_TIMEOUT:-10}"
rss_mb=2048
malloc_mb=512

CXX="${CXX_FUZZ:-clang++}"
jobs="${FUZZ_JOBS:-$(nproc)}"
cache="${FUZZ_CACHE:-$HOME/.cache/bigplan/fuzz-obj}"
# -O1: at -O0 the sources compile in half the time but the fuzzers run 4-35x fewer inputs a second (device_profile
# 477 vs 1973 exec/s, hf_config 7 vs 247). -gline-tables-only is all the symbolizer needs for file:line stacks.
flags=(-std=c++20 "${FUZZ_OPT:--O1}" -gline-tables-only -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined
       -fno-sanitize-recover=undefined -Wall -Wno-sign-compare -I.)
link_flags=(-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -pthread)
mkdir -p "$work/bin" "$cache"
echo "fuzz: building with $("$CXX" --version | head -1), object cache $cache"

# The plan schema's generated header, in the cache (a fixed path, so it does not change the object keys).
fbs_key=$( (flatc --version; cat schema/plan.fbs) | sha256sum | cut -c1-16)
gen="$cache/gen-$fbs_key"
if [[ ! -f "$gen/schema/plan_generated.h" ]]; then
  flatc --cpp --scoped-enums -o "$gen.tmp$$/schema" schema/plan.fbs
  mv -T "$gen.tmp$$" "$gen" 2>/dev/null || rm -rf "$gen.tmp$$"
fi
flags+=(-I"$gen")

# The sources of each fuzzer, from its Bazel target (the library sources it depends on and its own .cc).
declare -A srcs
all=()
for n in $names; do
  grep -q "^$n " <<<"$table" || { echo "fuzz: unknown fuzzer $n"; exit 2; }
  srcs[$n]=$(bazel query --noimplicit_deps "kind('source file', deps(//tests/fuzz:${n}_fuzzer))" 2>/dev/null |
             sed -nE 's#^//([^:]*):(.*\.cc)$#\1/\2#p; s#^//:(.*\.cc)$#\1#p' | sort)
  [[ -n "${srcs[$n]}" ]] || { echo "fuzz: bazel query found no sources for //tests/fuzz:${n}_fuzzer"; exit 2; }
  # shellcheck disable=SC2206
  all+=(${srcs[$n]})
done
mapfile -t all < <(printf '%s\n' "${all[@]}" | sort -u)

# Compile every source once ($jobs at a time). The key covers the compiler, the flags and the preprocessed source
# (line markers hold relative paths, so clones of the repository share objects).
compile_one() {
  local src="$1" key o
  key=$( { "$CXX" --version; printf '%s\n' "${flags[@]}" "$src"; "$CXX" "${flags[@]}" -E "$src"; } | sha256sum | cut -c1-32)
  o="$cache/$key.o"
  if [[ -f "$o" ]]; then
    touch "$o"
    echo "$src $o cached"
  else
    local t=$SECONDS
    "$CXX" "${flags[@]}" -fdebug-prefix-map="$root"=. -c "$src" -o "$o.tmp$$" || return 1
    mv "$o.tmp$$" "$o"
    echo "  compiled $src ($((SECONDS - t)) s)" >&2
    echo "$src $o compiled"
  fi
}
export -f compile_one
export CXX root cache
build_start=$(date +%s)
objmap="$work/objects.txt"
# Arrays cannot be exported: hand the flags over NUL-separated.
printf '%s\0' "${flags[@]}" > "$work/flags"
printf '%s\n' "${all[@]}" | FLAGS_FILE="$work/flags" xargs -P "$jobs" -I{} bash -c \
  'mapfile -d "" -t flags < "$FLAGS_FILE"; compile_one "$1"' _ {} > "$objmap" || { echo "fuzz: compile failed"; exit 1; }
compiled_now=$(grep -c ' compiled$' "$objmap" || true)
declare -A obj
while read -r s o _; do obj[$s]=$o; done < "$objmap"

# Link each fuzzer from its own objects.
for n in $names; do
  objs=()
  for s in ${srcs[$n]}; do objs+=("${obj[$s]}"); done
  rm -f "$work/bin/${n}_fuzzer"
  echo "$CXX ${link_flags[*]} ${objs[*]} -o $work/bin/${n}_fuzzer"
done | xargs -P "$jobs" -I{} bash -c '{}' || { echo "fuzz: linking failed"; exit 1; }
for n in $names; do [[ -x "$work/bin/${n}_fuzzer" ]] || { echo "fuzz: linking ${n}_fuzzer failed"; exit 1; }; done
build_s=$(( $(date +%s) - build_start ))
echo "fuzz: built ${#all[@]} sources (${compiled_now} compiled, the rest cached) and $(wc -w <<<"$names") fuzzers in ${build_s} s"
# Objects not used for 30 days leave the cache.
find "$cache" -maxdepth 1 -name '*.o' -mtime +30 -delete 2>/dev/null || true

# Seeds: formats and hardening inputs from make_seeds.py; real plans, descriptions and profiles from the planner.
rm -rf "$work/seeds"
python3 tests/fuzz/make_seeds.py "$work/seeds"
if grep -qE '\b(plan_verify|model_desc|device_profile)\b' <<<"$names"; then
  bazel build //tests/fuzz:planner_seed_gen 2>&1 | tail -1
  "$(bazel info bazel-bin 2>/dev/null)/tests/fuzz/planner_seed_gen" "$work/seeds" > /dev/null
fi

# Run: one fuzzer per job slot; each writes its log and a one-line result, printed in table order at the end.
run_one() {
  local n="$1" seeds="$2" max_len="$3" dir="$work/$1" t0 rc=0
  mkdir -p "$dir/corpus"
  cp -n "$work/seeds/$seeds"/* "$dir/corpus/" 2>/dev/null || true
  rm -f "$dir"/result.txt
  t0=$(date +%s.%N)
  (cd "$dir" && exec "$work/bin/${n}_fuzzer" -max_total_time="$seconds" -max_len="$max_len" -timeout="$timeout_s" \
      -rss_limit_mb="$rss_mb" -malloc_limit_mb="$malloc_mb" -artifact_prefix="$dir/" -print_final_stats=1 \
      corpus > "$dir/log.txt" 2>&1) || rc=$?
  local wall execs rate rss slow
  wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$dir/log.txt" | tail -1)
  rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$dir/log.txt" | tail -1)
  rss=$(sed -nE 's/^stat::peak_rss_mb: *([0-9]+).*/\1/p' "$dir/log.txt" | tail -1)
  slow=$(sed -nE 's/^stat::slowest_unit_time_sec: *([0-9]+).*/\1/p' "$dir/log.txt" | tail -1)
  local line
  line=$(printf '  %-20s %4s s  %10s execs  %7s exec/s  peak RSS %5s MB  slowest input %s s' "$n" "$wall" "${execs:-?}" \
         "${rate:-?}" "${rss:-?}" "${slow:-?}")
  if [[ $rc -eq 0 ]]; then
    echo "$line  clean" > "$dir/result.txt"
  else
    local art
    art=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$dir/log.txt" | tail -1)
    echo "$line  FAILED (exit $rc): reproducer ${art:-none written}, log $dir/log.txt" > "$dir/result.txt"
  fi
}
export -f run_one
export work seconds timeout_s rss_mb malloc_mb
echo "fuzz: running $(wc -w <<<"$names") fuzzers for ${seconds} s each, ${jobs} at a time (per input: -timeout=${timeout_s} s," \
     "-rss_limit_mb=${rss_mb}, -malloc_limit_mb=${malloc_mb})"
run_start=$(date +%s)
for n in $names; do grep "^$n " <<<"$table"; done | xargs -P "$jobs" -L1 bash -c 'run_one "$@"' _
run_s=$(( $(date +%s) - run_start ))

failed=()
for n in $names; do
  cat "$work/$n/result.txt"
  if ! grep -q ' clean$' "$work/$n/result.txt"; then
    failed+=("$n")
    echo "---- last lines of $work/$n/log.txt"
    tail -30 "$work/$n/log.txt"
  fi
done
total_s=$(( $(date +%s) - start ))
count=$(wc -w <<<"$names")
if [[ ${#failed[@]} -eq 0 ]]; then
  echo "fuzz: ${count} fuzzers, ${seconds} s each, all clean (build ${build_s} s, fuzzing ${run_s} s, total ${total_s} s)"
else
  echo "fuzz: ${count} fuzzers, ${seconds} s each, FAILED: ${failed[*]} (build ${build_s} s, fuzzing ${run_s} s, total ${total_s} s)"
  exit 1
fi
