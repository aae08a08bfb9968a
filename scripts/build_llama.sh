#!/usr/bin/env bash
# Build llama-cpp-python for this machine, fast and safe, and print the wheel's path on stdout.
# Usage: bash scripts/build_llama.sh PYTHON
#
# Fast: llama.cpp is compiled for this CPU (GGML_NATIVE, its default), so it uses AVX2/AVX-512/VNNI
# where the CPU has them and repacks quantized weights for those kernels.
# Safe: on x86-64 the AMX kernels are left out (-mno-amx-*; GCC and Clang let an explicit -mno-X win
# over -march=native whatever the order). ggml's AMX matmul faults on quantized weights on Intel
# Xeon hosts (llama.cpp issue 20824, unfixed upstream); without it those weights take the AVX-512
# repacked path. The SDK guards builds from elsewhere too (pocketomni/backend/cpu_guard.py).
#
# The wheel is kept in ~/.cache/pocketomni/wheels/<key>/, the key hashing the version, the flags and
# the CPU (model name and feature flags): a native build must never be reused on another CPU.
# Extra CMake options (for example -DGGML_METAL=on) can be given in CMAKE_ARGS; they join the key.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:?usage: build_llama.sh PYTHON}"
version="$(sed -n 's/^ *"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)"
[ -n "$version" ] || { echo "build_llama.sh: no llama-cpp-python==X pin in pyproject.toml" >&2; exit 1; }

flags=""
why="native build"
if [ "$(uname -m)" = "x86_64" ]; then
  flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  why="native build without AMX kernels (llama.cpp issue 20824)"
fi
cpu="$( (grep -m1 -E '^(model name|Hardware|CPU part)' /proc/cpuinfo; grep -m1 -E '^(flags|Features)' /proc/cpuinfo) 2>/dev/null \
  || sysctl -n machdep.cpu.brand_string 2>/dev/null || uname -m)"
key="$(printf '%s\n' "$version" "$flags" "${CMAKE_ARGS:-}" "$cpu" | sha256sum | cut -c1-16)"
dir="${POCKETOMNI_WHEEL_CACHE:-$HOME/.cache/pocketomni/wheels}/llama-cpp-python-$version-$key"

wheel="$(ls "$dir"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)"
if [ -n "$wheel" ]; then
  echo "llama-cpp-python $version: reusing $why from $dir" >&2
else
  echo "llama-cpp-python $version: building from source, $why (about 10 minutes on 2 cores)..." >&2
  mkdir -p "$dir.partial"
  # CFLAGS/CXXFLAGS seed CMake's CMAKE_C_FLAGS/CMAKE_CXX_FLAGS; --no-cache-dir keeps pip's own wheel
  # cache (keyed by version only) from handing back a build made with other flags or on another CPU.
  CFLAGS="${CFLAGS:-} $flags" CXXFLAGS="${CXXFLAGS:-} $flags" \
    "$python" -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
    -w "$dir.partial" "llama-cpp-python==$version" >&2
  rm -rf "$dir" && mv "$dir.partial" "$dir"
  wheel="$(ls "$dir"/llama_cpp_python-*.whl | head -n1)"
  echo "llama-cpp-python $version: built $why" >&2
fi
echo "$wheel"
