#!/usr/bin/env bash
# Set up everything the tests need and run them. This is the README's test command; .ci/run calls it.
# Installs the Debian packages the tests use (when run as root), starts Xvfb and PulseAudio,
# installs the package with its test extras into .venv, and runs pytest. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/system_deps.sh
source scripts/services.sh
bash scripts/setup.sh test

set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: counted as a failure" >&2
  exit 1
fi
exit "$rc"
