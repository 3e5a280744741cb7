#!/bin/bash
# Runs safetensors_reference_test.py with the project's Python (which has torch and safetensors).
# Args: PYTHON_WRAPPER SCRIPT CHECKER (runfiles-relative paths).
set -euo pipefail
python="$1"
if [[ ! -x "$python" ]]; then
  for candidate in "${TEST_SRCDIR:-}/torch/python3" "${TEST_SRCDIR:-}/torch/python3.sh"; do
    if [[ -x "$candidate" ]]; then python="$candidate"; break; fi
  done
fi
exec "$python" "$2" "$3"
