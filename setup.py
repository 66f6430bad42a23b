"""Build script: the ``sswp_fast`` package, its embedded dataset, and the compiled ops of ``csrc/``
(``sswp_fast._C``: the InfoNCE op's CPU kernels, built with the C++ compiler and OpenMP)."""

import sys

from setuptools import setup

ext_modules = []
cmdclass = {}
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:  # torch absent at build time: the package falls back to its PyTorch formulas
    print("sswp-fast: torch not importable, building without the compiled ops", file=sys.stderr)
else:
    ext_modules.append(CppExtension(
        "sswp_fast._C",
        ["csrc/info_nce_ops.cpp", "csrc/info_nce_cpu.cpp"],
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    ))
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(
    packages=["sswp_fast", "sswp_fast.data"],
    package_data={"sswp_fast.data": ["*.npz"], "sswp_fast": ["py.typed"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
