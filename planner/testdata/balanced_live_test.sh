#!/bin/sh
# Parity of the "balanced" / "balanced_low_0" placements with Accelerate, computed live: the venv's Accelerate
# computes the balanced device maps of the parity cases (meta-device models, no weights), then
# placement_balanced_parity_main checks the rebalanced budgets and that bigplan puts every block where Accelerate
# put it.
set -eu
root="$TEST_SRCDIR/bigplan"
export HF_HOME="$TEST_TMPDIR/hf" HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
"$TEST_SRCDIR/torch/python3.sh" "$root/planner/testdata/make_balanced_fixtures.py" \
  --root "$root" --out "$TEST_TMPDIR/live_balanced_maps.json"
"$root/planner/placement_balanced_parity_main" "$TEST_TMPDIR/live_balanced_maps.json" "$root"
