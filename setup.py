"""Build script: the ``sswp_fast`` package, its embedded dataset, and the compiled ops of ``csrc/``:

- ``sswp_fast._C``: the op schemas and CPU kernels (C++ compiler, OpenMP), built whenever torch is importable;
- ``sswp_fast._C_cuda``: the CUDA kernels (nvcc), built when torch has CUDA and nvcc is found, GPU or not.

Their sources, flags, C++ standard and CUDA architectures come from ``csrc/build.cmake``, the build description
that the standalone CMake build (``CMakeLists.txt``) reads too; that file says why both read it.
``SSWP_FAST_CUDA=0`` skips the CUDA extension. ``CUDA_HOME`` defaults to the toolkit that the ``nvcc`` on PATH
belongs to (as nvcc itself reports it, so wrapper scripts and symlinks are seen through), and
``TORCH_CUDA_ARCH_LIST`` to the description's architectures (``8.0;9.0``: A100, H100/H200).
"""

import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

BUILD_DESCRIPTION = "csrc/build.cmake"
# what the description may hold: set(NAME value ...) commands with plain (unquoted, variable-free) values, one
# command to a line
_SET_COMMAND = re.compile(r"\s*set\(\s*([A-Z][A-Z0-9_]*)((?:\s+[^\s()\"$;#\\\[\]]+)+)\s*\)[ \t]*(?:\n|\Z)")


def read_build_description(path: str = BUILD_DESCRIPTION) -> dict[str, list[str]]:
    """The variables that ``path`` sets, each to its list of values, read as CMake's ``include()`` reads them.

    Only ``set(NAME value ...)`` commands with plain values and ``#`` line comments are understood; anything
    else raises ValueError rather than being read differently from CMake.
    """
    with open(path, encoding="utf-8") as file:
        lines = list(file)
    if any("#[" in line for line in lines):
        raise ValueError(f"{path}: bracket comments (#[[ ... ]]) are not understood here")
    text, description, position = "".join(re.sub("#.*", "", line) for line in lines), {}, 0
    while text[position:].strip():
        command = _SET_COMMAND.match(text, position)
        if command is None:
            line = text.count("\n", 0, position) + 1
            raise ValueError(f"{path}, line {line}: only set(NAME value ...) with plain values is understood here")
        name, values = command.group(1), command.group(2).split()
        if name in description:
            raise ValueError(f"{path}: {name} is set twice")
        description[name] = values
        position = command.end()
    return description


def cuda_toolkit_root() -> str | None:
    """Where the CUDA toolkit lives, or None when the CUDA extension should not be built."""
    if os.environ.get("SSWP_FAST_CUDA", "1") == "0":
        return None
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    dry_run = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, check=False)
    for line in dry_run.stderr.splitlines() + dry_run.stdout.splitlines():
        if line.startswith("#$ TOP="):
            return os.path.realpath(line.removeprefix("#$ TOP=").strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def extensions() -> tuple[list, dict]:
    """The extensions to build (as ``csrc/build.cmake`` describes them) and the ``build_ext`` command."""
    try:
        import torch
    except ImportError:  # the package then falls back to its PyTorch formulas
        print("sswp-fast: torch not importable, building without the compiled ops", file=sys.stderr)
        return [], {}
    ops = read_build_description()
    cuda_home = cuda_toolkit_root() if torch.version.cuda else None
    if cuda_home:  # read by torch.utils.cpp_extension at import
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ";".join(ops["SSWP_CUDA_ARCHITECTURES"]))
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    (standard,) = ops["SSWP_CXX_STANDARD"]
    cxx_flags = [*ops["SSWP_CXX_FLAGS"], f"-std=c++{standard}"]
    openmp = ["-fopenmp"] if ops["SSWP_CPU_OPENMP"] == ["ON"] else []
    module = ops["SSWP_PYTHON_MODULE_SOURCES"]
    built = [CppExtension(
        "sswp_fast._C",
        [*ops["SSWP_CPU_SOURCES"], *module],
        define_macros=[("SSWP_MODULE", "_C")],
        extra_compile_args=cxx_flags + openmp,
        extra_link_args=openmp,
    )]
    if cuda_home:
        built.append(CUDAExtension(
            "sswp_fast._C_cuda",
            [*ops["SSWP_CUDA_SOURCES"], *module],
            define_macros=[("SSWP_MODULE", "_C_cuda")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": [*ops["SSWP_CUDA_FLAGS"], f"-std=c++{standard}"]},
        ))
    else:
        print("sswp-fast: torch without CUDA or no nvcc found, building the CPU ops only", file=sys.stderr)
    return built, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(
    packages=["sswp_fast", "sswp_fast.search", "sswp_fast.search.executors", "sswp_fast.stages", "sswp_fast.nasiam",
              "sswp_fast.data", "sswp_fast.losses", "sswp_fast.runtime", "sswp_fast.kernels"],
    package_dir={"sswp_fast.kernels": "kernels"},  # the Triton kernels live at the top of the tree
    package_data={"sswp_fast.data": ["*.npz"], "sswp_fast": ["py.typed"],
                  "sswp_fast.nasiam": ["published/*/*.txt"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
