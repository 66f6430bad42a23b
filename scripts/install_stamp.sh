#!/usr/bin/env bash
# Print a fingerprint of everything an install depends on: the Python, the requirements and the build inputs
# (setup.py, pyproject.toml, csrc/). scripts/install.sh stores it; scripts/test.sh reinstalls when it changed.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  python3 --version
  sha256sum requirements.txt setup.py pyproject.toml scripts/install.sh
  find csrc -type f -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -d' ' -f1
