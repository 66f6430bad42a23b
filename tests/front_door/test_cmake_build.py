"""The standalone CMake build of csrc/ (CMakeLists.txt): configure, build and run its C++ unit test with CTest.

Configures with Ninja into a temporary directory against this interpreter's torch, builds with 2 jobs and runs
``ctest --output-on-failure`` (tests/cpp/test_info_nce.cpp). The CPU library only: the CUDA source is compiled
(and its library checked, ``tests/losses/test_info_nce_op.py``) by the install's ``setup.py`` build, and compiling
it a second time here cost CI a minute and a half. About half a minute on the 2-core CI machine. That both builds
compile what ``csrc/build.cmake`` describes, CUDA included, is checked by ``test_build_description.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def find_tool(name: str) -> str | None:
    """``name`` on PATH, else next to this interpreter (the pip ``cmake`` / ``ninja`` packages install there)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def run(command: list[str], cwd: Path, timeout: int) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    output = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{output}"


@pytest.mark.slow(seconds=65)
def test_cmake_builds_the_ops_and_ctest_passes(tmp_path: Path) -> None:
    cmake, ninja, ctest = find_tool("cmake"), find_tool("ninja"), find_tool("ctest")
    if not (cmake and ctest):
        pytest.skip("cmake/ctest not found (on PATH or beside the interpreter)")
    if not ninja:
        pytest.skip("ninja not found (on PATH or beside the interpreter)")
    build = tmp_path / "build"
    configure = [cmake, "-S", str(ROOT), "-B", str(build), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
                 f"-DPython3_EXECUTABLE={sys.executable}", "-DSSWP_FAST_CUDA=OFF"]
    run(configure, ROOT, timeout=300)
    run([cmake, "--build", str(build), "-j", "2"], ROOT, timeout=1200)
    assert (build / "libsswp_fast_ops.so").is_file()
    run([ctest, "--output-on-failure"], build, timeout=300)
