"""Build script: the ``sswp_fast`` package, its embedded dataset, and the compiled ops of ``csrc/``:

- ``sswp_fast._C``: the op schemas and CPU kernels (C++ compiler, OpenMP), built whenever torch is importable;
- ``sswp_fast._C_cuda``: the CUDA kernels (nvcc), built when torch has CUDA and nvcc is found, GPU or not.

``SSWP_FAST_CUDA=0`` skips the CUDA extension. ``CUDA_HOME`` defaults to the toolkit that the ``nvcc`` on PATH
belongs to (as nvcc itself reports it, so wrapper scripts and symlinks are seen through), and
``TORCH_CUDA_ARCH_LIST`` to ``8.0;9.0`` (A100, H100/H200).
"""

import os
import shutil
import subprocess
import sys

from setuptools import setup


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
    try:
        import torch
    except ImportError:  # the package then falls back to its PyTorch formulas
        print("sswp-fast: torch not importable, building without the compiled ops", file=sys.stderr)
        return [], {}
    cuda_home = cuda_toolkit_root() if torch.version.cuda else None
    if cuda_home:  # read by torch.utils.cpp_extension at import
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    module = "csrc/python_module.cpp"
    built = [CppExtension(
        "sswp_fast._C",
        ["csrc/info_nce_ops.cpp", "csrc/info_nce_autograd.cpp", "csrc/info_nce_cpu.cpp", module],
        define_macros=[("SSWP_MODULE", "_C")],
        extra_compile_args=["-O3", "-fopenmp", "-fno-trapping-math"],  # lets the exp loops vectorize
        extra_link_args=["-fopenmp"],
    )]
    if cuda_home:
        built.append(CUDAExtension(
            "sswp_fast._C_cuda",
            ["csrc/info_nce_cuda.cu", module],
            define_macros=[("SSWP_MODULE", "_C_cuda")],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
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
