#!/usr/bin/env bash
# Runs the GPU-tagged test binaries of a bundle on the GPU machine (see README, "GPU tests"):
#   tools/bundle_gpu.sh //tests/e2e:e2e_gpu_test //tests/e2e:host_compute_gpu_test //tests/e2e:prequant_gpu_test \
#     //tests/e2e:thread_safety_test //tests/e2e:step_rows_test //executor:kernels_gpu_test \
#     //executor:kernels_quant_gpu_test //executor:cuda_handles_gpu_test //tools:plan //tools:gen_checkpoint
#   (carry .bundle to the GPU machine) tools/run_gpu_tests.sh
# Prints each binary's gtest summary and a final "N passed, N failed" line.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
passed=0; failed=0
# The tiny reference models (transformers on this machine's Python), shared by the test binaries.
export BIGPLAN_TINY_MODELS="${BIGPLAN_TINY_MODELS:-/tmp/bigplan-tiny-models}"
if [[ ! -d "$BIGPLAN_TINY_MODELS/gptj" ]]; then
  "${BIGPLAN_PYTHON:-python3}" tests/reference/make_tiny_models.py --out-root "$BIGPLAN_TINY_MODELS" --families all >/dev/null
fi
for t in e2e_gpu_test host_compute_gpu_test prequant_gpu_test kernels_gpu_test kernels_quant_gpu_test thread_safety_test step_rows_test \
    cuda_handles_gpu_test; do
  [[ -x .bundle/bin/$t ]] || continue
  echo "=== $t"
  if .bundle/gpu_env.sh ".bundle/bin/$t" 2>&1 | tee "${OUT:-/tmp}/$t.log" | grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]|max rel|overlap" | tail -40; then :; fi
  if grep -q "^\[  FAILED  \]" "${OUT:-/tmp}/$t.log" || ! grep -q "^\[  PASSED  \]" "${OUT:-/tmp}/$t.log"; then
    failed=$((failed + 1)); echo "$t: FAILED"
  else
    passed=$((passed + 1)); echo "$t: PASSED"
  fi
done
echo "gpu tests: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
