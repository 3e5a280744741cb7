#!/usr/bin/env bash
# Golden tests of the tools' text output: `plan` with no arguments (the bundled examples) and `inspect` of a small
# plan (tools/testdata/tiny-llama planned with an explicit device map that streams from cpu and disk), and `plan` and
# `inspect` of the same model split over two GPUs (tensor parallel).
#
# Regenerate after an intended change:
#   bazel run //tools:golden_test -- --update       (or UPDATE_GOLDENS=1 bazel run //tools:golden_test)
# and review the diff of tools/testdata/*.golden.
set -euo pipefail

runfiles="${RUNFILES_DIR:-${TEST_SRCDIR:-$0.runfiles}}/bigplan"
plan="$runfiles/tools/plan"
inspect="$runfiles/tools/inspect"
data="$runfiles/tools/testdata"
work="${TEST_TMPDIR:-$(mktemp -d)}"

update=0
[[ "${1:-}" == "--update" || -n "${UPDATE_GOLDENS:-}" ]] && update=1

# Runs from the runfiles tree so the tools find the bundled examples there.
cd "$runfiles"
unset BUILD_WORKING_DIRECTORY

"$plan" --quiet > "$work/plan_examples.out"
"$plan" --quiet --model "$data/tiny-llama" --max-memory "cuda:0=1GiB,cpu=1GiB" --seq-len 64 \
  --device-map "$data/tiny-llama-device-map.json" -o "$work/tiny.bplan" > "$work/plan_tiny.out"
"$inspect" "$work/tiny.bplan" > "$work/inspect_tiny.out"
# Tensor parallel: every block of the tiny Llama split over two GPUs (placement candidate T).
"$plan" --quiet --model "$data/tiny-llama" --max-memory "cuda:0=1GiB,cuda:1=1GiB" --seq-len 64 \
  --auto-candidates T -o "$work/tiny_tp.bplan" > "$work/plan_tiny_tp.out"
"$inspect" "$work/tiny_tp.bplan" > "$work/inspect_tiny_tp.out"

status=0
for name in plan_examples plan_tiny inspect_tiny plan_tiny_tp inspect_tiny_tp; do
  golden="$data/$name.golden"
  if ((update)); then
    if [[ -z "${BUILD_WORKSPACE_DIRECTORY:-}" ]]; then
      echo "--update needs bazel run (BUILD_WORKSPACE_DIRECTORY is not set)" >&2
      exit 2
    fi
    cp "$work/$name.out" "$BUILD_WORKSPACE_DIRECTORY/tools/testdata/$name.golden"
    echo "updated tools/testdata/$name.golden"
  elif ! diff -u "$golden" "$work/$name.out"; then
    echo "FAIL: $name differs from tools/testdata/$name.golden (regenerate: bazel run //tools:golden_test -- --update)" >&2
    status=1
  fi
done
exit $status
