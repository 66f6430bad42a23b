// Schemas of the sswp_fast custom ops and their CPU registrations. The CUDA registrations live beside the
// CUDA kernels (info_nce_cuda.cu); autograd and fake kernels are registered from Python (sswp_fast/compiled.py).

#include <torch/library.h>

#include "info_nce.h"

TORCH_LIBRARY(sswp_fast, m) {
  m.def("info_nce_forward(Tensor features, float temperature) -> (Tensor loss, Tensor lse, Tensor rank)");
  m.def("info_nce_backward(Tensor grad_loss, Tensor features, Tensor lse, float temperature) -> Tensor");
}

TORCH_LIBRARY_IMPL(sswp_fast, CPU, m) {
  m.impl("info_nce_forward", &sswp_fast::info_nce_forward_cpu);
  m.impl("info_nce_backward", &sswp_fast::info_nce_backward_cpu);
}
