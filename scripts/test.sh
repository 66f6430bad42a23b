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
workers=$(bash scripts/test_workers.sh)
echo "pytest, slow tests excluded, on $workers worker processes: a few minutes on an idle 2-core machine"
# One test file per worker (module fixtures run once); one torch thread per worker, so that the workers do not
# fight over the cores (results do not depend on the thread count).
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" .venv/bin/python -m pytest -q -m "not slow" -n "$workers" --dist loadfile "$@"
