// Autograd of sswp_fast::info_nce_forward, registered in C++ for every device (the Autograd alias key): the
// backward calls sswp_fast::info_nce_backward through the dispatcher, so it reaches the CPU or CUDA kernel and,
// under torch.compile, the fake kernel. Registering it here rather than from Python keeps the Python
// interpreter out of every training step (at 2N = 192 that was a quarter of the op's time).

#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

namespace sswp_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_forward(const at::Tensor& features, double temperature) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sswp_fast::info_nce_forward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, double)>();
  return op.call(features, temperature);
}

at::Tensor call_backward(const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& lse,
                         double temperature) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sswp_fast::info_nce_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(grad_loss, features, lse, temperature);
}

class InfoNCE : public torch::autograd::Function<InfoNCE> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& features, double temperature) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, lse, rank] = call_forward(features, temperature);
    ctx->save_for_backward({features, lse});
    ctx->saved_data["temperature"] = temperature;
    ctx->mark_non_differentiable({lse, rank});
    return {loss, lse, rank};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const double temperature = ctx->saved_data["temperature"].toDouble();
    return {call_backward(grad_outputs[0], saved[0], saved[1], temperature), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward_autograd(const at::Tensor& features,
                                                                         double temperature) {
  const variable_list out = InfoNCE::apply(features, temperature);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace sswp_fast

TORCH_LIBRARY_IMPL(sswp_fast, Autograd, m) {
  m.impl("info_nce_forward", &sswp_fast::info_nce_forward_autograd);
}
