#!/usr/bin/env bash
# The SDK on ARM64, on an x86-64 machine: llama-cpp-python's native libraries cross-compiled for
# aarch64 with the Android recipe's CPU flags (armv8.2-a+dotprod+fp16, no OpenMP), an arm64 Debian
# root from Debian's packages, numpy/Pillow aarch64 wheels from PyPI, and qemu-user running:
#   1. `pocketomni demo` end to end (text, image, audio in, speech out) on the tiny demo model;
#   2. scripts/arm64_compare.py, a greedy turn (image + audio in, text + speech out) on the same model
#      files under qemu and natively on x86; the reply tokens must be identical and the speech
#      waveform is compared (SNR), the figures going to $WORK/compare.json (a turn whose tokens first
#      differ at a near-tie passes and is reported as such, with the margin and the logit differences);
#   3. scripts/arm64_stages.py, the image + audio turn stage by stage (pixels, log-mel, embeddings,
#      prompt, logits teacher-forced along x86's tokens, talker codes, token2wav on x86's codes):
#      per-stage differences and the top-2 margin where the greedy choice flips, to $WORK/stages.json.
#
#   4. compare_f32: the same as 2 on the demo checkpoint written in f32 (no quantized weights), strict.
#
#   bash scripts/arm64_check.sh [STAGE ...]     stages: deps build rootfs wheels demo compare compare_f32 stages
#                                               (default: all)
#
# Every stage reuses what an earlier run left in $WORK (default /tmp/pocketomni-arm64). Runs as root
# for apt-get (deps stage) only. CPU heavy: the build runs under `nice -n 10` with $JOBS jobs (default 2).
# Needs: apt (deb.debian.org) and PyPI; the x86 side uses $PYTHON (default .venv/bin/python, with the
# SDK's dependencies and the demo model buildable: pocketomni[demo]).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/tmp/pocketomni-arm64}"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-$here/.venv/bin/python}"
SUITE="${SUITE:-bookworm}"                 # Debian release of the arm64 root (its python3 must match PYTHON's minor)
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ARCH_FLAGS="${ARM_ARCH:-armv8.2-a+dotprod+fp16}"  # = p4a_recipes/llama_cpp_python (GGML_CPU_ARM_ARCH); ARM_ARCH overrides (experiments)
QEMU_CPU="${QEMU_CPU:-cortex-a76}"         # armv8.2-a with dotprod and fp16, no SVE: a phone-class core
LLAMA_VERSION="$(sed -n 's/^ *"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$here/pyproject.toml")"
PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
mkdir -p "$WORK"
log() { echo "[arm64_check $(date +%H:%M:%S)] $*" >&2; }

stage_deps() {
  local need=()
  for p in gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user debootstrap cmake ninja-build; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  command -v qemu-aarch64 >/dev/null || { log "qemu-aarch64 missing (package qemu-user)"; exit 1; }
}

# llama-cpp-python's sdist: its Python package (pure ctypes) and the llama.cpp it vendors.
stage_build() {
  local src="$WORK/llama_cpp_python-$LLAMA_VERSION" out="$WORK/lib"
  if [ -f "$out/libllama.so" ] && [ -f "$out/libmtmd.so" ]; then log "build: reusing $out"; return; fi
  if [ ! -d "$src" ]; then
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$WORK/sdist" "llama-cpp-python==$LLAMA_VERSION"
    tar -xzf "$WORK/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$WORK"
  fi
  log "build: cross-compiling llama.cpp $LLAMA_VERSION for aarch64 (-march=$ARCH_FLAGS, no OpenMP, $JOBS jobs, nice 10)"
  cmake -S "$src" -B "$WORK/build" -G Ninja \
    -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
    -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_CPU_ARM_ARCH="$ARCH_FLAGS" \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DSKBUILD_PLATLIB_DIR="$WORK/install" >"$WORK/cmake.log" 2>&1 \
    || { tail -30 "$WORK/cmake.log" >&2; exit 1; }
  # only what llama-cpp-python loads (libllama, libmtmd and ggml), not llama.cpp's common library or tools
  nice -n 10 cmake --build "$WORK/build" -j "$JOBS" --target llama mtmd >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; exit 1; }
  rm -rf "$out" && mkdir -p "$out"
  for lib in ggml-base ggml-cpu ggml llama mtmd; do  # built with RPATH $ORIGIN: they find each other here
    find "$WORK/build" -name "lib$lib.so*" -exec cp -a {} "$out/" \;
  done
  log "build: $(ls "$out" | tr '\n' ' ')"
  file -L "$out/libllama.so" >&2
}

# An arm64 Debian root: debootstrap's first stage downloads the packages (a --foreign root needs no
# arm64 code to run), then every downloaded package is unpacked. python3 runs from it under qemu-user
# with -L (no chroot, no binfmt_misc needed); maintainer scripts are not run, Python does not need them.
stage_rootfs() {
  local root="$WORK/rootfs"
  if [ -x "$root/usr/bin/python$PYVER" ]; then log "rootfs: reusing $root"; return; fi
  log "rootfs: debootstrap --arch=arm64 --foreign $SUITE (python3, libstdc++, libgomp-free)"
  rm -rf "$root"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,libstdc++6 \
    "$SUITE" "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  for deb in "$root"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$root"; done
  [ -x "$root/usr/bin/python$PYVER" ] || { log "rootfs: no python$PYVER in $SUITE's arm64 root; set SUITE"; exit 1; }
  qemu-aarch64 -L "$root" "$root/usr/bin/python$PYVER" -c 'import platform; print("arm64 root:", platform.machine(), platform.python_version())' >&2
}

# The SDK's dependencies for aarch64, the same versions as the x86 side: binary wheels from PyPI.
stage_wheels() {
  local site="$WORK/site"
  if [ -f "$site/.done" ]; then log "wheels: reusing $site"; return; fi
  local pins=()
  for p in numpy pillow gguf jinja2 markupsafe tqdm pyyaml typing_extensions diskcache; do
    pins+=("$p==$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$p'))")")
  done
  log "wheels: ${pins[*]} for manylinux2014_aarch64 cp${PYVER/./}"
  rm -rf "$site"
  "$PYTHON" -m pip install -q --target "$site" --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
    --platform manylinux_2_17_aarch64 --python-version "$PYVER" --implementation cp --only-binary=:all: \
    --no-deps "${pins[@]}"
  cp -a "$WORK/llama_cpp_python-$LLAMA_VERSION/llama_cpp" "$site/llama_cpp"  # the ctypes package, libs via LLAMA_CPP_LIB_PATH
  rm -rf "$site/llama_cpp/lib" && ln -s "$WORK/lib" "$site/llama_cpp/lib"  # llama_cpp._ggml looks only there
  touch "$site/.done"
}

# Run python under qemu in the arm64 root with our libraries and the SDK from this checkout.
arm_python() {
  env -i PATH=/usr/bin:/bin HOME="$WORK/home" LANG=C.UTF-8 \
    PYTHONPATH="$here/src:$WORK/site" LLAMA_CPP_LIB_PATH="$WORK/lib" MTMD_CPP_LIB="$WORK/lib" \
    QEMU_LD_PREFIX="$WORK/rootfs" QEMU_CPU="$QEMU_CPU" \
    qemu-aarch64 -L "$WORK/rootfs" "$WORK/rootfs/usr/bin/python$PYVER" "$@"
}

# The demo model, built once on x86 (its builder needs the vocabulary download) and shared: both
# sides read the very same files.
demo_model() {
  local folder
  folder="$(cd "$here" && PYTHONPATH="$here/src" "$PYTHON" -c 'from pocketomni.cli.demo import ensure_demo_model; print(ensure_demo_model(progress=False))')"
  mkdir -p "$WORK/home/.cache"
  ln -sfn "$(dirname "$folder")" "$WORK/home/.cache/pocketomni"
  echo "$folder"
}

stage_demo() {
  demo_model >/dev/null
  log "demo: pocketomni demo under qemu-aarch64 (2 threads)"
  local TIMEFORMAT="[arm64_check] demo under qemu: %R s wall, %U s user + %S s sys CPU (the machine's load inflates wall)"
  time { arm_python -c 'import platform, sys; from pocketomni.cli.main import main; print("machine:", platform.machine()); sys.exit(main(["demo", "--out", sys.argv[1], "--threads", "2"]))' \
    "$WORK/demo-out" 2>&1 | tee "$WORK/demo.log"; }
  log "demo: the same natively on x86, then both replies compared (text, speech SNR)"
  PYTHONPATH="$here/src" "$PYTHON" -m pocketomni.cli.main demo --out "$WORK/demo-out-x86" --threads 2 >"$WORK/demo-x86.log" 2>&1
  # the demo samples (fixed seeds): a logit moved by ARM's rounding can change a sampled token, so this
  # comparison informs; the greedy turn (compare, compare_f32) is the check
  PYTHONPATH="$here/src" "$PYTHON" "$here/scripts/arm64_compare.py" demo "$WORK/demo-x86.log" "$WORK/demo.log" \
    "$WORK/demo-out-x86" "$WORK/demo-out" || log "demo: the sampled replies differ between the machines (see above)"
}

# One greedy turn on FOLDER natively on x86, then under qemu teacher-forced along x86's tokens, then
# compared: compare_turn NAME FOLDER SUFFIX [compare options]; figures to $WORK/compare$SUFFIX.json.
compare_turn() {
  local name="$1" folder="$2" suffix="$3"
  shift 3
  log "$name: greedy turn natively on x86"
  local t0=$SECONDS
  PYTHONPATH="$here/src" "$PYTHON" "$here/scripts/arm64_compare.py" run "$folder" "$WORK/x86$suffix.npz"
  local tx=$((SECONDS - t0))
  log "$name: the same turn under qemu-aarch64"
  t0=$SECONDS
  local TIMEFORMAT="[arm64_check] $name under qemu: %R s wall, %U s user + %S s sys CPU"
  time arm_python "$here/scripts/arm64_compare.py" run "$folder" "$WORK/arm64$suffix.npz" \
    --forced-from "$WORK/x86$suffix.npz"
  local ta=$((SECONDS - t0))
  PYTHONPATH="$here/src" "$PYTHON" "$here/scripts/arm64_compare.py" compare "$WORK/x86$suffix.npz" \
    "$WORK/arm64$suffix.npz" --wall "$tx" "$ta" --out "$WORK/compare$suffix.json" "$@"
}

# The demo model as shipped. Passes when every reply token is identical, or when a turn first differs at
# a near-tie (the margin there below the logit differences measured at the steps before it); the report
# says which.
stage_compare() {
  local folder
  folder="$(demo_model)"  # (a failure here stops the script: set -e)
  compare_turn compare "$folder" "" --allow-near-ties
}

# The same turn on the demo checkpoint written in f32 throughout (same seed, no quantized weights): the
# SDK's own arithmetic and logic (positions, TMRoPE, media layout, sampling, talker feed) on ARM, without
# the q8_0 activation rounding that makes the demo model's near-ties flip. Strict: every token identical.
stage_compare_f32() {
  local folder="$WORK/demo-f32"
  if [ ! -f "$folder/pocketomni.json" ]; then
    local seed
    seed="$(PYTHONPATH="$here/src" "$PYTHON" -c 'from pocketomni.cli.demo import DEMO_SEED; print(DEMO_SEED)')"
    log "compare_f32: the demo checkpoint (seed $seed) written in f32"
    PYTHONPATH="$here/src" "$PYTHON" -m pocketomni.cli.main synth tiny "$folder" --quant f32 --mmproj-quant f32 \
      --talker-quant f32 --token2wav-type f32 --seed "$seed" --no-progress >&2
  fi
  compare_turn compare_f32 "$folder" -f32
}

# Where the image + audio turn parts ways: every stage of it on both machines (scripts/arm64_stages.py),
# the thinker teacher-forced along x86's tokens, cross-fed with x86's media rows, token2wav on x86's codes.
stage_stages() {
  local folder
  folder="$(demo_model)"
  log "stages: the image + audio turn stage by stage, natively on x86"
  PYTHONPATH="$here/src" "$PYTHON" "$here/scripts/arm64_stages.py" run "$folder" "$WORK/stages-x86.npz"
  log "stages: the same under qemu-aarch64 (teacher-forced along x86's tokens)"
  local TIMEFORMAT="[arm64_check] stages under qemu: %R s wall, %U s user + %S s sys CPU"
  time arm_python "$here/scripts/arm64_stages.py" run "$folder" "$WORK/stages-arm64.npz" --reference "$WORK/stages-x86.npz"
  PYTHONPATH="$here/src" "$PYTHON" "$here/scripts/arm64_stages.py" compare "$WORK/stages-x86.npz" "$WORK/stages-arm64.npz" \
    --out "$WORK/stages.json"
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(deps build rootfs wheels demo compare compare_f32 stages)
for s in "${stages[@]}"; do "stage_$s"; done
