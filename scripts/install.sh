#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned requirements plus sswp-fast in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
