#!/usr/bin/env bash
# Create .venv (if missing), install the pinned requirements, then sswp-fast in editable mode (this compiles the
# C++ InfoNCE extension). Records what it installed in .venv/install-stamp, so that scripts/test.sh can skip an
# install that is already current.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "install 1/3: creating the virtual environment .venv"
  python3 -m venv .venv
else
  echo "install 1/3: using the existing virtual environment .venv"
fi
echo "install 2/3: pinned requirements from requirements.txt (torch, triton, ...: under a minute from a local" \
     "wheel cache, several minutes when torch downloads)"
.venv/bin/pip install --disable-pip-version-check --progress-bar off -r requirements.txt \
  | { grep -v "^Requirement already satisfied" || true; }
echo "install 3/3: sswp-fast in editable mode; compiling the C++ InfoNCE extension (about 2 minutes on 2 cores)"
.venv/bin/pip install --disable-pip-version-check --progress-bar off --no-build-isolation --no-deps -e . \
  | { grep -v "^Requirement already satisfied" || true; }
bash scripts/install_stamp.sh > .venv/install-stamp
echo "installed into .venv; what was built and what a run here uses (sswp-fast doctor):"
.venv/bin/sswp-fast doctor
