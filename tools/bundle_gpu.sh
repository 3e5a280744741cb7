#!/usr/bin/env bash
# Builds GPU-side binaries here (-c opt) and copies them into .bundle/ (git-ignored), ready to carry to a GPU
# machine that has the same torch (2.11.0+cu130) and CUDA 13. On that machine run them through
# .bundle/gpu_env.sh, which points LD_LIBRARY_PATH at that machine's torch lib/ and CUDA.
#
#   tools/bundle_gpu.sh [bazel targets...]     (default: //tools:gpu_smoke)
# Binaries land in .bundle/bin/<name>; each target's runfiles (data files) in .bundle/bin/<name>.runfiles.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
targets=("$@")
((${#targets[@]})) || targets=(//tools:gpu_smoke)
bazel build -c opt "${targets[@]}"
rm -rf .bundle && mkdir -p .bundle/bin
for t in "${targets[@]}"; do
  pkg="${t#//}"; pkg="${pkg%%:*}"; name="${t##*:}"
  cp -L "bazel-bin/$pkg/$name" ".bundle/bin/$name"
  if [[ -d "bazel-bin/$pkg/$name.runfiles" ]]; then
    cp -rL "bazel-bin/$pkg/$name.runfiles" ".bundle/bin/$name.runfiles" 2>/dev/null || true
    rm -rf ".bundle/bin/$name.runfiles/torch" ".bundle/bin/$name.runfiles/cuda"  # that machine has its own
    rm -rf ".bundle/bin/$name.runfiles/bigplan/_solib_k8/"_U@cuda_*  # (cuBLAS: its /usr/local/cuda/lib64)
  fi
done
# Libraries from this machine's Debian packages that the GPU machine lacks (Google Benchmark, ICU, PCRE2,
# SentencePiece): copied beside the binaries; gpu_env.sh puts .bundle/lib on the library path. (LibTorch, CUDA and
# the C/C++ runtimes come from that machine.)
mkdir -p .bundle/lib
for bin in .bundle/bin/*; do
  [[ -f "$bin" && -x "$bin" ]] || continue
  ldd "$bin" 2>/dev/null | awk '/=> \//{print $3}' | grep -E '/lib(benchmark|icu|pcre2|sentencepiece)[^/]*$' || true
done | sort -u | while read -r lib; do cp -L "$lib" .bundle/lib/; done
cp tools/gpu_env.sh .bundle/gpu_env.sh
du -sh .bundle
