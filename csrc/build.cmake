# The one build description of the compiled ops: their sources, compiler flags, C++ standard and CUDA
# architectures. Both builds read it: CMakeLists.txt include()s it (the standalone libraries and the CTest
# test), and setup.py (pip install: sswp_fast._C and sswp_fast._C_cuda) parses it, so it holds set(NAME value
# ...) commands with plain values and comments only; setup.py refuses anything else. Paths are relative to the
# repository root.
#
# Why both builds read this list rather than setup.py driving the CMake build (as vLLM's does): pip install
# then needs no more than it does today, a C++ compiler and, for the CUDA op, nvcc. cmake is no build
# requirement (neither requirements.txt nor pyproject.toml's build-system lists it), and the GPU machines install
# offline with --no-build-isolation, where a missing cmake could not be fetched; torch.utils.cpp_extension keeps
# building the extensions (ABI, include paths, arch flags, ninja, the .so files in place) as before.
# tests/front_door/test_build_description.py checks that both builds take all of the below from here.

set(SSWP_CXX_STANDARD 20)  # C++ and CUDA (the CPU kernels use std::bit_cast)

# sswp_fast._C / libsswp_fast_ops: the op schemas, the autograd and the CPU kernels
set(SSWP_CPU_SOURCES csrc/info_nce_ops.cpp csrc/info_nce_autograd.cpp csrc/info_nce_cpu.cpp)
set(SSWP_CXX_FLAGS -O3 -fno-trapping-math)  # of every C++ source; -fno-trapping-math lets the exp loops vectorize
set(SSWP_CPU_OPENMP ON)  # ON or OFF: the CPU kernels' OpenMP (parallel_for, omp simd)

# sswp_fast._C_cuda / libsswp_fast_ops_cuda: the CUDA kernels and their registrations
set(SSWP_CUDA_SOURCES csrc/info_nce_cuda.cu)
set(SSWP_CUDA_FLAGS -O3)  # nvcc's, after torch.utils.cpp_extension.COMMON_NVCC_FLAGS (both builds add those)
# compute capabilities, SASS only (A100, H100/H200); TORCH_CUDA_ARCH_LIST / -DCMAKE_CUDA_ARCHITECTURES override
set(SSWP_CUDA_ARCHITECTURES 8.0 9.0)

# setup.py only: the Python module init of each extension (the standalone libraries have none)
set(SSWP_PYTHON_MODULE_SOURCES csrc/python_module.cpp)
