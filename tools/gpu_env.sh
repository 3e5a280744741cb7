#!/usr/bin/env bash
# On the GPU machine: run a bundled binary with that machine's LibTorch and CUDA libraries.
#   .bundle/gpu_env.sh .bundle/bin/gpu_smoke [args...]
set -euo pipefail
py="${BIGPLAN_PYTHON:-python3}"
torch_lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
bundle_lib="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib"  # libraries bundle_gpu.sh copied (Benchmark, ICU)
export LD_LIBRARY_PATH="$torch_lib:/usr/local/cuda/lib64:$bundle_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
