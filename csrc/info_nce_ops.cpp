// Schemas of the sswp_fast custom ops and the CPU registrations; also the (empty) Python module
// sswp_fast._C whose import loads this library and so registers the ops.

#include <Python.h>
#include <torch/library.h>

#include <tuple>

namespace sswp_fast {
std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward_cpu(const at::Tensor& features,
                                                                     double temperature);
at::Tensor info_nce_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& lse,
                                 double temperature);
}  // namespace sswp_fast

TORCH_LIBRARY(sswp_fast, m) {
  m.def("info_nce_forward(Tensor features, float temperature) -> (Tensor loss, Tensor lse, Tensor rank)");
  m.def("info_nce_backward(Tensor grad_loss, Tensor features, Tensor lse, float temperature) -> Tensor");
}

TORCH_LIBRARY_IMPL(sswp_fast, CPU, m) {
  m.impl("info_nce_forward", &sswp_fast::info_nce_forward_cpu);
  m.impl("info_nce_backward", &sswp_fast::info_nce_backward_cpu);
}

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sswp-fast compiled ops", -1, nullptr};
  return PyModule_Create(&module);
}
