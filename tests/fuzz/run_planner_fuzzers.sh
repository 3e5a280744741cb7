#!/bin/bash
# Builds the planner's libFuzzer targets with clang (Bazel's toolchain here is gcc) and runs each for a while:
#   plan_verify_fuzzer     VerifyPlan (schema/plan_io.h) + walking every field of an accepted plan + the overlap checker
#   model_desc_fuzzer      ModelDescription::Parse (planner/model_desc.h) + canonical JSON round trip
#   device_profile_fuzzer  ParseDeviceProfile (planner/device_profile.h)
#
#   tests/fuzz/run_planner_fuzzers.sh [SECONDS_PER_FUZZER (default 60)] [WORK_DIR (default /tmp/bigplan-planner-fuzz)]
#
# Seeds are real plans and descriptions made by the planner itself (planner_seed_gen.cc). A crash leaves its
# reproducer in WORK_DIR/<fuzzer>/ and fails the run. (The formats parsers have their own: tests/fuzz/run_fuzzers.sh.)
set -euo pipefail
seconds="${1:-60}"
work="${2:-/tmp/bigplan-planner-fuzz}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

CXX="${CXX_FUZZ:-clang++}"
base=(-std=c++20 -O1 -g -fno-omit-frame-pointer -I. -I"$work/gen" -Wall -Wno-sign-compare)
fuzz=("${base[@]}" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)

mkdir -p "$work/bin" "$work/gen/schema" "$work/obj"
flatc --cpp --scoped-enums -o "$work/gen/schema" schema/plan.fbs

# The planner library and what it needs, as in the Bazel targets (tests and mains excluded).
lib=(support/result.cc support/sha256.cc support/units.cc support/file_read.cc support/json_parse.cc
     formats/dtype.cc formats/guarded_copy.cc formats/mapped_file.cc formats/json_util.cc formats/safetensors.cc
     formats/checkpoint.cc schema/plan_io.cc)
for f in planner/*.cc; do
  case "$f" in *_test.cc|*_main.cc|*_testutil.cc) continue ;; esac
  lib+=("$f")
done

echo "building with $("$CXX" --version | head -1)"
# Seed generator: an ordinary (address-sanitized) program.
"$CXX" "${base[@]}" -fsanitize=address "${lib[@]}" tests/fuzz/planner_seed_gen.cc -o "$work/bin/planner_seed_gen"
rm -rf "$work/seeds"
"$work/bin/planner_seed_gen" "$work/seeds"

"$CXX" "${fuzz[@]}" support/result.cc support/file_read.cc schema/plan_io.cc planner/overlap_check.cc \
  tests/fuzz/plan_verify_fuzzer.cc -o "$work/bin/plan_verify_fuzzer"
"$CXX" "${fuzz[@]}" support/result.cc support/sha256.cc support/file_read.cc support/json_parse.cc formats/dtype.cc \
  planner/model_desc.cc tests/fuzz/model_desc_fuzzer.cc -o "$work/bin/model_desc_fuzzer"
"$CXX" "${fuzz[@]}" support/result.cc support/file_read.cc support/json_parse.cc planner/device_profile.cc \
  tests/fuzz/device_profile_fuzzer.cc -o "$work/bin/device_profile_fuzzer"

source "$(dirname "${BASH_SOURCE[0]}")/fuzz_run.sh"
run plan_verify_fuzzer "$work/seeds/plan" 32768
run model_desc_fuzzer "$work/seeds/desc" 131072
run device_profile_fuzzer "$work/seeds/profile" 4096
exit $status
