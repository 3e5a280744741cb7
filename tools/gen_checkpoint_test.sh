#!/bin/bash
# End-to-end checks of //tools:gen_checkpoint: output layout, determinism, exit codes.
set -euo pipefail
tool="$1"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
fail() { echo "FAIL: $*" >&2; exit 1; }

cat > "$tmp/spec.json" <<'JSON'
{"tensors": [
  {"name": "model.embed_tokens.weight", "shape": [1000, 64], "dtype": "BF16"},
  {"name": "model.layers.0.input_layernorm.weight", "shape": [64]},
  {"name": "model.layers.0.mlp.up_proj.weight", "shape": [256, 64], "dtype": "F32"},
  {"name": "model.norm.weight", "shape": [64], "dtype": "F16"}
]}
JSON

"$tool" --out "$tmp/a" --spec "$tmp/spec.json" --max-shard-bytes 64KiB --seed 5 2> "$tmp/a.log" \
  || fail "gen_checkpoint failed: $(cat "$tmp/a.log")"
grep -q "wrote 4 tensors" "$tmp/a.log" || fail "no summary on stderr: $(cat "$tmp/a.log")"
[[ -f "$tmp/a/model-00001-of-00004.safetensors" && -f "$tmp/a/model-00003-of-00004.safetensors" ]] \
  || fail "unexpected shards: $(ls "$tmp/a")"
grep -q '"total_size": 193792' "$tmp/a/model.safetensors.index.json" || fail "bad index: $(cat "$tmp/a/model.safetensors.index.json")"

"$tool" --out="$tmp/b" --spec="$tmp/spec.json" --max-shard-bytes=64KiB --seed=5 --threads=1 2> /dev/null
"$tool" --out "$tmp/c" --spec "$tmp/spec.json" --max-shard-bytes 64KiB --seed 6 2> /dev/null
for f in "$tmp"/a/*; do
  cmp -s "$f" "$tmp/b/$(basename "$f")" || fail "same seed gave different bytes in $(basename "$f")"
done
if cmp -s "$tmp/a/model-00001-of-00004.safetensors" "$tmp/c/model-00001-of-00004.safetensors"; then
  fail "different seeds gave the same bytes"
fi

"$tool" --out "$tmp/one" --spec "$tmp/spec.json" --prefix weights 2> /dev/null
[[ -f "$tmp/one/weights.safetensors" && -f "$tmp/one/weights.safetensors.index.json" ]] || fail "single shard layout"

expect_exit() {
  local want="$1"; shift
  set +e
  "$tool" "$@" > /dev/null 2> "$tmp/err.log"
  local got=$?
  set -e
  [[ "$got" == "$want" ]] || fail "gen_checkpoint $* exited $got, expected $want: $(cat "$tmp/err.log")"
  grep -q '^gen_checkpoint: ' "$tmp/err.log" || fail "no error message for $*"
}
expect_exit 2 --spec "$tmp/spec.json"
expect_exit 2 --out "$tmp/x" --spec "$tmp/spec.json" --max-shard-bytes 12XB
expect_exit 2 --out "$tmp/x" --spec "$tmp/spec.json" --seed -3
expect_exit 2 --out "$tmp/x" --bogus 1
expect_exit 1 --out "$tmp/x" --spec "$tmp/missing.json"
echo '{"tensors": [{"name": "w", "shape": [2], "dtype": "Q4"}]}' > "$tmp/bad.json"
expect_exit 1 --out "$tmp/x" --spec "$tmp/bad.json"
echo '{"tensors": [' > "$tmp/broken.json"
expect_exit 1 --out "$tmp/x" --spec "$tmp/broken.json"
grep -q 'broken.json' "$tmp/err.log" || fail "error does not name the spec file"
echo "gen_checkpoint_test: ok"
