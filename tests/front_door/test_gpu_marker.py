"""The ``gpu`` marker: CUDA-only tests skip with their reason where CUDA is absent, and ``scripts/gpu_check.sh``
selects them by it (so a GPU session runs every one of them, the CUDA-graph replay test included)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skips of a machine without CUDA")
def test_gpu_tests_skip_with_their_reason_and_gpu_check_runs_them():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p", "no:cacheprovider",
                             "tests/search/executors/test_cuda_graphs.py", "tests/kernels/test_mixed_activation.py"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "2 skipped" in result.stdout and "passed" not in result.stdout, result.stdout[-2000:]
    assert "no CUDA device on this machine: CUDA graphs need a CUDA device" in result.stdout
    assert 'python -m pytest -q -m gpu' in (ROOT / "scripts" / "gpu_check.sh").read_text()
