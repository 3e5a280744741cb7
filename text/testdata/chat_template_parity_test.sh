#!/usr/bin/env bash
# Chat templates equal to transformers' rendering: Llama-2/3/3.1, Mistral v0.1/v0.3, Qwen2/2.5 and SmolLM2
# templates (and one exercising the interpreter's features) over several conversations, with and without the
# generation prompt, tools included; templates that raise must fail with the same message. The real SmolLM2
# directory (tools/setup.sh converts it) goes through AutoTokenizer.apply_chat_template when present.
set -euo pipefail

runfiles="${RUNFILES_DIR:-${TEST_SRCDIR:-$0.runfiles}}"
python="$runfiles/torch/python3.sh"
work="${TEST_TMPDIR:-$(mktemp -d)}"
home="$(getent passwd "$(id -u)" | cut -d: -f6)"
smol="${BIGPLAN_MODELS:-$home/.cache/bigplan/models}/smollm2-135m-instruct"
extra=()
[[ -f "$smol/tokenizer_config.json" ]] && extra=(--smollm2-dir "$smol")
"$python" "$runfiles/bigplan/text/testdata/make_chat_cases.py" "$work/cases.json" "${extra[@]}" \
  || { echo "FAIL: could not render the cases with transformers" >&2; exit 1; }
"$runfiles/bigplan/text/chat_template_parity" "$work/cases.json"
