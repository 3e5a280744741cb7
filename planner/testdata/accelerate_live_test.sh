#!/bin/sh
# Parity of the "sequential" placement with Accelerate, computed live: the venv's Accelerate computes the device
# maps of the parity cases (meta-device models, no weights), then placement_parity_main checks that bigplan puts
# every block where Accelerate put it.
set -eu
root="$TEST_SRCDIR/bigplan"
export HF_HOME="$TEST_TMPDIR/hf" HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
"$TEST_SRCDIR/torch/python3.sh" "$root/planner/testdata/make_accelerate_fixtures.py" \
  --root "$root" --out "$TEST_TMPDIR/live_device_maps.json"
"$root/planner/placement_parity_main" "$TEST_TMPDIR/live_device_maps.json" "$root"
