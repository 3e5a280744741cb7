#!/bin/bash
# Builds the libFuzzer targets for the inputs a user hands the tools (ASan + UBSan, clang) and runs each for a while:
#   hf_config_fuzzer   config.json import (planner/hf_import.h): errors name the file; accepted configs validate,
#                      carry consistent sliding-window flags and round-trip through the description format
#   index_fuzzer       the safetensors index parser: accepted shard names stay inside the model directory
#   device_map_fuzzer  --device-map JSON (strict, depth-capped parse) -> placement of a small Llama
#
#   tests/fuzz/run_hardening_fuzzers.sh [SECONDS_PER_FUZZER (default 60)] [WORK_DIR (default /tmp/bigplan-hardening-fuzz)]
#
# Prints each fuzzer's executions, rate and peak RSS. A crash leaves its reproducer in WORK_DIR/<fuzzer>/ and fails
# the run.
set -euo pipefail
seconds="${1:-60}"
work="${2:-/tmp/bigplan-hardening-fuzz}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

CXX="${CXX_FUZZ:-clang++}"
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -I. -I"$work/gen" -Wall -Wno-sign-compare)
formats=(support/result.cc support/sha256.cc support/file_read.cc support/json_parse.cc formats/dtype.cc
         formats/guarded_copy.cc formats/mapped_file.cc formats/json_util.cc formats/safetensors.cc formats/checkpoint.cc)
# The planner library as the Bazel targets build it (tests and mains excluded).
planner=("${formats[@]}" support/units.cc schema/plan_io.cc)
for f in planner/*.cc; do
  case "$f" in *_test.cc|*_main.cc|*testutil.cc) continue ;; esac
  planner+=("$f")
done

mkdir -p "$work/bin" "$work/seeds/config" "$work/seeds/map" "$work/gen/schema"
flatc --cpp --scoped-enums -o "$work/gen/schema" schema/plan.fbs
python3 tests/fuzz/make_seeds.py "$work/seeds"
# config.json seeds: the bundled examples and the test configs.
i=0
for f in planner/examples/*/config.json planner/testdata/configs/*/config.json tools/testdata/tiny-llama/config.json; do
  [[ -f "$f" ]] && cp "$f" "$work/seeds/config/seed$((i++)).json"
done
printf '%s' '{"model_type":"qwen2","hidden_size":16,"num_hidden_layers":3,"num_attention_heads":2,"intermediate_size":8,"vocab_size":8,"use_sliding_window":true,"sliding_window":4,"max_window_layers":1}' > "$work/seeds/config/qwen2_sliding.json"
printf '%s' '{"model_type":"gpt2","n_embd":8,"n_layer":2,"n_head":2,"vocab_size":8,"scale_attn_by_inverse_layer_idx":true}' > "$work/seeds/config/gpt2_scaled.json"
printf '%s' '{"":"cpu"}' > "$work/seeds/map/all_cpu.json"
printf '%s' '{"model.embed_tokens":0,"model.layers.0":"cpu","model.layers.1":"disk","model.layers.2":1,"model.norm":0,"lm_head":"cuda:0"}' > "$work/seeds/map/mixed.json"
[[ -f tools/testdata/tiny-llama-device-map.json ]] && cp tools/testdata/tiny-llama-device-map.json "$work/seeds/map/"

echo "building with $("$CXX" --version | head -1)"
# Each library source is compiled once (instrumented, -fsanitize=fuzzer-no-link) into WORK_DIR/obj, reused by every
# fuzzer and by later runs while it is newer than the source.
mkdir -p "$work/obj"
objflags=("${flags[@]/-fsanitize=fuzzer,address,undefined/-fsanitize=fuzzer-no-link,address,undefined}")
objects() {  # objects SOURCES... -> prints the object files
  local out=()
  for src in "$@"; do
    local o="$work/obj/${src//\//_}.o"
    if [[ ! -f "$o" || "$src" -nt "$o" ]]; then "$CXX" "${objflags[@]}" -c "$src" -o "$o"; fi
    out+=("$o")
  done
  echo "${out[@]}"
}
formats_o=$(objects "${formats[@]}")
planner_o=$(objects "${planner[@]}")
# shellcheck disable=SC2086
"$CXX" "${flags[@]}" $planner_o tests/fuzz/hf_config_fuzzer.cc -o "$work/bin/hf_config_fuzzer"
# shellcheck disable=SC2086
"$CXX" "${flags[@]}" $formats_o tests/fuzz/index_fuzzer.cc -o "$work/bin/index_fuzzer"
# shellcheck disable=SC2086
"$CXX" "${flags[@]}" $planner_o tests/fuzz/device_map_fuzzer.cc -o "$work/bin/device_map_fuzzer"

source "$(dirname "${BASH_SOURCE[0]}")/fuzz_run.sh"
run hf_config_fuzzer "$work/seeds/config" 16384
run index_fuzzer "$work/seeds/index" 16384
run device_map_fuzzer "$work/seeds/map" 4096
exit $status
