#!/usr/bin/env bash
# Bit-exact parity of the C++ tokenizers with the Python `tokenizers` package: the Python side builds tokenizers
# of every supported family plus the real SmolLM2 one, a 110 KB mixed corpus (English, code, CJK, emoji, runs of
# whitespace) and its ids/texts; the C++ side must reproduce every one (text/tokenizer_parity_main.cc). Then the
# `tokenize` tool round-trips the corpus for each family.
set -euo pipefail

runfiles="${RUNFILES_DIR:-${TEST_SRCDIR:-$0.runfiles}}"
python="$runfiles/torch/python3.sh"
parity="$runfiles/bigplan/text/tokenizer_parity"
tokenize="$runfiles/bigplan/tools/tokenize"
work="${TEST_TMPDIR:-$(mktemp -d)}/cases"
fail() { echo "FAIL: $*" >&2; exit 1; }

# The real SmolLM2 tokenizer: from the converted model (tools/setup.sh) when present, else from the GGUF file.
home="$(getent passwd "$(id -u)" | cut -d: -f6)"
smol="${BIGPLAN_MODELS:-$home/.cache/bigplan/models}/smollm2-135m-instruct/tokenizer.json"
extra=()
[[ -f "$smol" ]] && extra=(--smollm2-json "$smol")
"$python" "$runfiles/bigplan/text/testdata/make_tokenizer_cases.py" "$work" "${extra[@]}" \
  || fail "could not build the cases with the Python tokenizers package"

"$parity" "$work" || fail "C++ tokenizers differ from the Python tokenizers package"

for d in "$work"/*/; do
  fam="$(basename "$d")"
  "$python" - "$work/cases.json" "$fam" "$work/$fam.want" "$work/$fam.want_text" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
f = [f for f in c["families"] if f["name"] == sys.argv[2]][0]
open(sys.argv[3], "w").write(" ".join(map(str, f["corpus_ids"])) + "\n")
open(sys.argv[4], "w", encoding="utf-8", newline="").write(f["corpus_decoded"])
PY
  "$tokenize" --model "$d" < "$work/corpus.txt" > "$work/$fam.ids" || fail "tokenize $fam"
  cmp -s "$work/$fam.ids" "$work/$fam.want" || fail "tokenize $fam: ids differ from Python"
  "$tokenize" --model "$d" --decode < "$work/$fam.ids" > "$work/$fam.text" || fail "tokenize --decode $fam"
  cmp -s "$work/$fam.text" "$work/$fam.want_text" || fail "tokenize --decode $fam: text differs from Python"
done

# Errors are reported, not crashed on.
printf '\xff\xfe' | "$tokenize" --model "$work/gpt2" >/dev/null 2>"$work/err" && fail "invalid UTF-8 accepted"
grep -q "not valid UTF-8" "$work/err" || fail "invalid UTF-8: $(cat "$work/err")"
echo "99999999" | "$tokenize" --model "$work/gpt2" --decode >/dev/null 2>"$work/err" && fail "unknown id accepted"
grep -q "not in the vocabulary" "$work/err" || fail "unknown id: $(cat "$work/err")"
"$tokenize" --model "$work/nonexistent" </dev/null >/dev/null 2>"$work/err" && fail "missing model accepted"
grep -q "nonexistent" "$work/err" || fail "missing model: $(cat "$work/err")"
echo "PASS"
