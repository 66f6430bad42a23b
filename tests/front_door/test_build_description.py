"""The one build description of the compiled ops, ``csrc/build.cmake``, and its two readers.

``setup.py`` (``pip install``) parses it and ``CMakeLists.txt`` (the standalone build) ``include()``s it; these
tests fail as soon as either takes a source, a flag, the C++ standard or a CUDA architecture from anywhere else,
or the two read the file differently:

- ``setup.py``'s parser and CMake itself (``cmake -P``) read the same variables with the same values, and the
  parser refuses whatever it might read unlike CMake;
- ``setup.py`` hands setuptools exactly the description's sources, flags and architectures (run in-process with
  ``setuptools.setup`` replaced, so nothing is compiled);
- every C++/CUDA source in ``csrc/`` is described, and neither ``CMakeLists.txt`` nor ``setup.py`` names any of
  them, of the flags or of the architectures itself;
- (slow) the compile commands that a CMake configure writes (no compiling) carry the description's sources,
  flags, standard and architectures, the CUDA ones too where nvcc and a CUDA build of torch are found.
"""

from __future__ import annotations

import ast
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import setuptools
import torch

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTION = ROOT / "csrc" / "build.cmake"
SOURCE_LISTS = ("SSWP_CPU_SOURCES", "SSWP_CUDA_SOURCES", "SSWP_PYTHON_MODULE_SOURCES")


def find_tool(name: str) -> str | None:
    """``name`` on PATH, else next to this interpreter (the pip ``cmake`` / ``ninja`` packages install there)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def read_with_cmake(cmake: str, path: Path) -> dict[str, list[str]]:
    """The variables that CMake's ``include(path)`` sets, each to its list of values (``cmake -P``)."""
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "print.cmake"
        script.write_text(
            "get_cmake_property(_before VARIABLES)\n"
            f'include("{path.as_posix()}")\n'
            "get_cmake_property(_after VARIABLES)\n"
            "list(REMOVE_ITEM _after ${_before} _before CMAKE_PARENT_LIST_FILE)\n"
            'foreach(_name IN LISTS _after)\n  message("${_name}=${${_name}}")\nendforeach()\n'
        )
        result = subprocess.run([cmake, "-P", str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return {name: values.split(";") for name, _, values in (line.partition("=") for line in result.stderr.splitlines())}


def run_setup_py(monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """Run setup.py as pip does but with ``setuptools.setup`` replaced: (its globals, what it passed to setup)."""
    passed: dict = {}
    monkeypatch.setattr(setuptools, "setup", passed.update)
    monkeypatch.chdir(ROOT)
    # setup.py sets CUDA_HOME and TORCH_CUDA_ARCH_LIST; monkeypatch restores what it touched before
    monkeypatch.delenv("SSWP_FAST_CUDA", raising=False)
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    if "CUDA_HOME" in os.environ:
        monkeypatch.setenv("CUDA_HOME", os.environ["CUDA_HOME"])
    else:
        monkeypatch.delenv("CUDA_HOME", raising=False)
    return runpy.run_path(str(ROOT / "setup.py"), run_name="__main__"), passed


@pytest.fixture
def setup_py(monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    return run_setup_py(monkeypatch)


@pytest.fixture(scope="module")
def cmake() -> str:
    cmake = find_tool("cmake")
    if cmake is None:
        pytest.skip("cmake not found (on PATH or beside the interpreter)")
    return cmake


def test_setup_py_and_cmake_read_the_description_alike(setup_py: tuple[dict, dict], cmake: str) -> None:
    described = setup_py[0]["read_build_description"](str(DESCRIPTION))
    assert described == read_with_cmake(cmake, DESCRIPTION)
    assert set(SOURCE_LISTS) <= set(described)
    assert described["SSWP_CPU_OPENMP"] in (["ON"], ["OFF"])


@pytest.mark.parametrize("text", [
    "set(SSWP_X ${SSWP_Y})",  # variables
    'set(SSWP_X "a b")',  # quoted arguments
    "set(SSWP_X a;b)",  # lists spelt with ';'
    "set(SSWP_X a)\nset(SSWP_X b)",  # set twice: CMake keeps the last
    "set(SSWP_X a) set(SSWP_Y b)",  # two commands on a line, which CMake does not parse
    "set(SSWP_X)",  # unset
    "if(WIN32)\nset(SSWP_X a)\nendif()",  # any other command
    "#[[\nset(SSWP_X a)\n#]]",  # a bracket comment, which CMake skips whole
])
def test_setup_py_refuses_what_it_would_read_unlike_cmake(
        setup_py: tuple[dict, dict], tmp_path: Path, text: str) -> None:
    path = tmp_path / "build.cmake"
    path.write_text(text + "\n")
    with pytest.raises(ValueError):
        setup_py[0]["read_build_description"](str(path))


def test_setup_py_reads_sets_and_comments(setup_py: tuple[dict, dict], tmp_path: Path) -> None:
    path = tmp_path / "build.cmake"
    path.write_text("# comment\nset(SSWP_A a/b.cpp  -O2)  # comment\nset(\n  SSWP_B  # comment\n  8.0\n  9.0\n)")
    assert setup_py[0]["read_build_description"](str(path)) == {"SSWP_A": ["a/b.cpp", "-O2"], "SSWP_B": ["8.0", "9.0"]}


def test_setup_py_builds_what_the_description_says(setup_py: tuple[dict, dict]) -> None:
    setup_globals, passed = setup_py
    ops = setup_globals["read_build_description"](str(DESCRIPTION))
    std = f"-std=c++{ops['SSWP_CXX_STANDARD'][0]}"
    openmp = ["-fopenmp"] if ops["SSWP_CPU_OPENMP"] == ["ON"] else []
    built = {extension.name: extension for extension in passed["ext_modules"]}
    with_cuda = bool(torch.version.cuda and setup_globals["cuda_toolkit_root"]())
    assert set(built) == {"sswp_fast._C"} | ({"sswp_fast._C_cuda"} if with_cuda else set())

    cpu = built["sswp_fast._C"]
    assert cpu.sources == ops["SSWP_CPU_SOURCES"] + ops["SSWP_PYTHON_MODULE_SOURCES"]
    assert cpu.extra_compile_args == ops["SSWP_CXX_FLAGS"] + [std] + openmp
    assert cpu.extra_link_args == openmp
    if with_cuda:
        cuda = built["sswp_fast._C_cuda"]
        assert cuda.sources == ops["SSWP_CUDA_SOURCES"] + ops["SSWP_PYTHON_MODULE_SOURCES"]
        assert cuda.extra_compile_args == {"cxx": ops["SSWP_CXX_FLAGS"] + [std], "nvcc": ops["SSWP_CUDA_FLAGS"] + [std]}
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == ";".join(ops["SSWP_CUDA_ARCHITECTURES"])


def test_every_source_in_csrc_is_described(setup_py: tuple[dict, dict]) -> None:
    ops = setup_py[0]["read_build_description"](str(DESCRIPTION))
    described = [source for name in SOURCE_LISTS for source in ops[name]]
    in_csrc = sorted(f"csrc/{path.name}" for pattern in ("*.cpp", "*.cu") for path in (ROOT / "csrc").glob(pattern))
    assert sorted(described) == in_csrc


def described_literals(ops: dict[str, list[str]]) -> list[str]:
    """What only the description may spell out: the sources in csrc/, the flags and the CUDA architectures (in
    TORCH_CUDA_ARCH_LIST's spelling and in CMake's)."""
    sources = [f"csrc/{path.name}" for pattern in ("*.cpp", "*.cu") for path in (ROOT / "csrc").glob(pattern)]
    architectures = [a for arch in ops["SSWP_CUDA_ARCHITECTURES"] for a in (arch, arch.replace(".", ""))]
    return sources + ops["SSWP_CXX_FLAGS"] + ops["SSWP_CUDA_FLAGS"] + architectures


def test_cmakelists_takes_everything_from_the_description(setup_py: tuple[dict, dict]) -> None:
    ops = setup_py[0]["read_build_description"](str(DESCRIPTION))
    code = "\n".join(line.split("#", 1)[0] for line in (ROOT / "CMakeLists.txt").read_text().splitlines())
    assert "include(csrc/build.cmake)" in code
    for name in ops:
        used = re.search(rf"\b{name}\b", code) is not None
        assert used == (name != "SSWP_PYTHON_MODULE_SOURCES"), f"CMakeLists.txt and {name}"
    for literal in described_literals(ops) + ["-fopenmp"]:  # OpenMP: the description's SSWP_CPU_OPENMP
        assert not re.search(rf"(?<![\w.-]){re.escape(literal)}(?![\w.])", code), f"CMakeLists.txt names {literal}"


def test_setup_py_spells_out_no_source_flag_or_architecture(setup_py: tuple[dict, dict]) -> None:
    ops = setup_py[0]["read_build_description"](str(DESCRIPTION))
    tree = ast.parse((ROOT / "setup.py").read_text())
    docstring = tree.body[0].value
    strings = [node.value for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str) and node is not docstring]
    for literal in described_literals(ops):
        assert not [string for string in strings if literal in string.split(";")], f"setup.py names {literal}"


@pytest.mark.slow(seconds=20)
def test_cmake_compiles_what_the_description_says(cmake: str, tmp_path: Path) -> None:
    ninja = find_tool("ninja")
    if ninja is None:
        pytest.skip("ninja not found (on PATH or beside the interpreter)")
    ops = read_with_cmake(cmake, DESCRIPTION)
    with_cuda = bool(torch.version.cuda and shutil.which("nvcc"))
    build = tmp_path / "build"
    configure = [cmake, "-S", str(ROOT), "-B", str(build), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
                 f"-DPython3_EXECUTABLE={sys.executable}", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
                 f"-DSSWP_FAST_CUDA={'ON' if with_cuda else 'OFF'}"]
    if with_cuda:
        configure.append(f"-DCMAKE_CUDA_COMPILER={shutil.which('nvcc')}")
    result = subprocess.run(configure, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    commands = {Path(entry["file"]).relative_to(ROOT).as_posix(): shlex.split(entry["command"])
                for entry in json.loads((build / "compile_commands.json").read_text())}
    expected = ops["SSWP_CPU_SOURCES"] + (ops["SSWP_CUDA_SOURCES"] if with_cuda else [])
    assert sorted(commands) == sorted(expected + ["tests/cpp/test_info_nce.cpp"])

    def contains(command: list[str], run: list[str]) -> bool:
        return any(command[i:i + len(run)] == run for i in range(len(command)))

    std = f"-std=c++{ops['SSWP_CXX_STANDARD'][0]}"
    openmp = ops["SSWP_CPU_OPENMP"] == ["ON"]
    for source in ops["SSWP_CPU_SOURCES"]:
        command = commands[source]
        assert contains(command, ops["SSWP_CXX_FLAGS"]) and std in command, command
        assert ("-fopenmp" in command) == openmp, command
    if with_cuda:
        from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

        for source in ops["SSWP_CUDA_SOURCES"]:
            command = commands[source]
            assert contains(command, COMMON_NVCC_FLAGS + ops["SSWP_CUDA_FLAGS"]) and std in command, command
            targets = {flag for flag in command if flag.startswith("--generate-code=")}
            assert targets == {f"--generate-code=arch=compute_{a},code=[sm_{a}]"
                               for a in (arch.replace(".", "") for arch in ops["SSWP_CUDA_ARCHITECTURES"])}
