#!/usr/bin/env bash
# Create .venv and install PocketOmni into it (editable). Usage: bash scripts/setup.sh [EXTRAS]
#   EXTRAS defaults to "" (runtime only); tests use "test", the app "app".
#
# llama-cpp-python is built from source for this CPU (about 10 minutes on 2 cores) by
# scripts/build_llama.sh, which keeps the wheel in a folder named after the version, the build
# flags and the CPU, so a later setup on the same machine reuses it and another CPU gets its own.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
wheel="$(bash scripts/build_llama.sh .venv/bin/python)"
.venv/bin/python -m pip install --quiet "$wheel"
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
# torch is pinned to the CPU build that ships on these machines (see pyproject's test extra).
.venv/bin/python -m pip install --quiet -e "$spec"
