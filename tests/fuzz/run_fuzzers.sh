#!/bin/bash
# Builds the libFuzzer targets with clang (Bazel's toolchain here is gcc) and runs each for a while.
#
#   tests/fuzz/run_fuzzers.sh [SECONDS_PER_FUZZER (default 60)] [WORK_DIR (default /tmp/bigplan-fuzz)]
#
# Seed corpora are generated on the fly. A crash leaves its reproducer in WORK_DIR/<fuzzer>/ and fails the run.
set -euo pipefail
seconds="${1:-60}"
work="${2:-/tmp/bigplan-fuzz}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

CXX="${CXX_FUZZ:-clang++}"
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -I. -Wall -Wno-sign-compare)
common=(support/result.cc support/sha256.cc support/file_read.cc support/json_parse.cc formats/dtype.cc
        formats/guarded_copy.cc formats/mapped_file.cc formats/json_util.cc formats/safetensors.cc)

mkdir -p "$work/bin"
python3 tests/fuzz/make_seeds.py "$work/seeds"

echo "building fuzzers with $("$CXX" --version | head -1)"
"$CXX" "${flags[@]}" "${common[@]}" tests/fuzz/safetensors_header_fuzzer.cc -o "$work/bin/safetensors_header_fuzzer"
"$CXX" "${flags[@]}" "${common[@]}" formats/checkpoint.cc tests/fuzz/index_fuzzer.cc -o "$work/bin/index_fuzzer"

source "$(dirname "${BASH_SOURCE[0]}")/fuzz_run.sh"
run safetensors_header_fuzzer "$work/seeds/safetensors"
run index_fuzzer "$work/seeds/index"
exit $status
