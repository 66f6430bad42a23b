#!/usr/bin/env bash
# Install (if needed) and run the checks: ruff, then the test suite (slow tests excluded; see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -m "not slow" "$@"
