#!/usr/bin/env bash
# Install (when the install is missing or out of date), then run the checks: ruff, then the test suite
# (slow tests excluded; .ci/run adds them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ] && [ -f .venv/install-stamp ] \
   && [ "$(cat .venv/install-stamp)" = "$(bash scripts/install_stamp.sh)" ]; then
  echo "install is current (requirements, setup.py and csrc/ unchanged since scripts/install.sh ran); skipping it"
else
  bash scripts/install.sh
fi
echo "ruff check"
.venv/bin/ruff check .
echo "pytest, slow tests excluded: about 8 minutes on an idle 2-core machine, up to 20 when it is loaded"
.venv/bin/python -m pytest -q -m "not slow" "$@"
