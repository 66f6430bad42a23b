// The InfoNCE op shared by its CPU (info_nce_cpu.cpp) and CUDA (info_nce_cuda.cu) kernels: the kernels'
// entry points, which the registrations and the C++ unit test call, and the device-agnostic steps around
// the tiled core (input checks, L2 normalisation and its backward), written once in ATen ops.
//
// Rows i and i+N of the [2N, D] features are the two views of sample i. With z = L2-normalised features and
// s_ij = z_i.z_j / tau, row i's loss is lse_i - s_{i,p(i)} where lse_i = log sum_{j != i} exp(s_ij) and p(i)
// is the partner row. Forward returns (mean loss, lse [2N] in the accumulation type, rank [2N] int64 = how
// many negatives score above the positive); backward recomputes the similarity tiles from z and lse.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace sswp_fast {

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward_cpu(const at::Tensor& features,
                                                                     double temperature);
at::Tensor info_nce_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& lse,
                                 double temperature);
std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward_cuda(const at::Tensor& features,
                                                                      double temperature);
at::Tensor info_nce_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& lse,
                                  double temperature);

namespace detail {

constexpr double kNormEps = 1e-12;  // F.normalize's eps

inline void check_features(const at::Tensor& features, double temperature) {
  TORCH_CHECK(features.dim() == 2, "info_nce expects [2N, D] features, got ", features.dim(), " dimensions");
  TORCH_CHECK(features.size(0) >= 2 && features.size(0) % 2 == 0,
              "info_nce needs an even number of rows (two views per sample), got ", features.size(0));
  TORCH_CHECK(at::isFloatingType(features.scalar_type()), "info_nce needs floating-point features, got ",
              features.scalar_type());
  TORCH_CHECK(temperature > 0, "temperature must be positive, got ", temperature);
}

inline void check_saved(const at::Tensor& lse, const at::Tensor& features) {
  TORCH_CHECK(lse.device() == features.device(), "info_nce_backward: lse is on ", lse.device(),
              " but the features are on ", features.device(), "; pass both on one device");
  TORCH_CHECK(lse.dim() == 1 && lse.size(0) == features.size(0), "info_nce_backward: lse must hold one value per "
              "feature row (", features.size(0), "), got shape ", lse.sizes());
}

// fp64 stays fp64; fp32, fp16 and bf16 accumulate in fp32
inline at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// z = f / max(||f||, eps) in the accumulation type; also returns the clamped norms
inline std::tuple<at::Tensor, at::Tensor> normalize_rows(const at::Tensor& features) {
  at::Tensor f = features.to(accumulation_type(features.scalar_type())).contiguous();
  at::Tensor norms = f.norm(2, {1}, /*keepdim=*/true).clamp_min(kNormEps);
  return {f / norms, norms};
}

// mean of lse_i - s_{i,p(i)}, in the features' dtype
inline at::Tensor mean_loss(const at::Tensor& lse, const at::Tensor& positive, const at::Tensor& features) {
  return (lse - positive).mean().to(features.scalar_type());
}

// s_{i,p(i)}: each row against its partner, the same value for both views of a sample
inline at::Tensor positive_logits(const at::Tensor& z, double temperature) {
  const int64_t half = z.size(0) / 2;
  const at::Tensor pairs = (z.narrow(0, 0, half) * z.narrow(0, half, half)).sum(1).mul_(1.0 / temperature);
  return at::cat({pairs, pairs});
}

// dL/df from dL/dz = scale * grad_z through z = f / max(||f||, eps): (g - z (z.g)) / ||f|| where the norm is
// above eps, g / eps below; returned in the features' dtype
inline at::Tensor normalize_backward(at::Tensor grad_z, const at::Tensor& z, const at::Tensor& norms,
                                     const at::Tensor& features, const at::Tensor& grad_loss, double temperature) {
  grad_z.mul_(grad_loss.to(grad_z.scalar_type()) / (static_cast<double>(z.size(0)) * temperature));
  const at::Tensor radial = (z * grad_z).sum(1, true).mul_(norms > kNormEps);
  return grad_z.addcmul_(z, radial, -1).div_(norms).to(features.scalar_type());
}

}  // namespace detail
}  // namespace sswp_fast
