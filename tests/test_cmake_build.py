"""The standalone CMake build of csrc/ (CMakeLists.txt): configure, build and run its C++ unit test with CTest.

Configures with Ninja into a temporary directory against this interpreter's torch, builds with 2 jobs and runs
``ctest --output-on-failure`` (tests/cpp/test_info_nce.cpp, CPU only). Where nvcc is found and torch is a CUDA
build, the CUDA library is configured on and must be built too (compiled and linked; no GPU needed). About a
minute on the 2-core CI machine with CUDA, half that without.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def find_tool(name: str) -> str | None:
    """``name`` on PATH, else next to this interpreter (the pip ``cmake`` / ``ninja`` packages install there)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def find_nvcc() -> str | None:
    """The CUDA compiler CMake would use: $CUDACXX, $CUDA_HOME/bin/nvcc, else nvcc on PATH."""
    if os.environ.get("CUDACXX"):
        return os.environ["CUDACXX"]
    if os.environ.get("CUDA_HOME"):
        nvcc = Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc"
        if nvcc.is_file():
            return str(nvcc)
    return shutil.which("nvcc")


def run(command: list[str], cwd: Path, timeout: int) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    output = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{output}"


@pytest.mark.slow
def test_cmake_builds_the_ops_and_ctest_passes(tmp_path: Path) -> None:
    cmake, ninja, ctest = find_tool("cmake"), find_tool("ninja"), find_tool("ctest")
    if not (cmake and ctest):
        pytest.skip("cmake/ctest not found (on PATH or beside the interpreter)")
    if not ninja:
        pytest.skip("ninja not found (on PATH or beside the interpreter)")
    nvcc = find_nvcc() if torch.version.cuda else None
    build = tmp_path / "build"
    configure = [cmake, "-S", str(ROOT), "-B", str(build), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
                 f"-DPython3_EXECUTABLE={sys.executable}", f"-DSSWP_FAST_CUDA={'ON' if nvcc else 'OFF'}"]
    if nvcc:
        configure.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    run(configure, ROOT, timeout=300)
    run([cmake, "--build", str(build), "-j", "2"], ROOT, timeout=1200)
    assert (build / "libsswp_fast_ops.so").is_file()
    assert (build / "libsswp_fast_ops_cuda.so").is_file() == bool(nvcc), "CUDA library built iff nvcc was found"
    run([ctest, "--output-on-failure"], build, timeout=300)
