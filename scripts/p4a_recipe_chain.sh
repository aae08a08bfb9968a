#!/usr/bin/env bash
# Resolve the APK's recipe chain with the python-for-android release buildozer.spec pins (no build):
# a throwaway venv with python-for-android from PyPI, then scripts/p4a_recipe_chain.py.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
version="$(sed -n 's/^p4a.branch = v//p' "$here/apps/kivy_demo/buildozer.spec")"
venv="${P4A_CHAIN_VENV:-/tmp/pocketomni-p4a-$version}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "python-for-android==$version"
fi
exec "$venv/bin/python" "$here/scripts/p4a_recipe_chain.py"
