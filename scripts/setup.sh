#!/usr/bin/env bash
# Create .venv and install PocketOmni into it (editable). Usage: bash scripts/setup.sh [EXTRAS]
#   EXTRAS defaults to "" (runtime only); tests use "test", the app "app".
# llama-cpp-python is built from source on first install (about 10 minutes on 2 cores); pip caches the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
# torch is pinned to the CPU build that ships on these machines (see pyproject's test extra).
.venv/bin/python -m pip install --quiet -e "$spec"
