// InfoNCE over [2N, D] features without the 2N x 2N similarity matrix: CPU kernels of the
// sswp_fast::info_nce_forward / info_nce_backward custom ops (schemas in info_nce_ops.cpp).
//
// Rows i and i+N are the two views of sample i. With z = L2-normalised features and s_ij = z_i.z_j / tau,
// row i's loss is lse_i - s_{i,p(i)} where lse_i = log sum_{j != i} exp(s_ij) and p(i) is the partner row.
// Forward streams over column tiles of s (one GEMM per tile) keeping an online log-sum-exp per row;
// backward recomputes the tiles: dL/dz_i = g/(2N tau) * sum_j (P_ij + P_ji - 2 [j = p(i)]) z_j with
// P_ij = exp(s_ij - lse_i), then the L2-normalisation backward. Extra memory: O(N*D + N*TILE).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

namespace sswp_fast {
namespace {

constexpr int64_t kTile = 256;
constexpr double kNormEps = 1e-12;  // F.normalize's eps

// z = f / max(||f||, eps), computed in the accumulation type (fp32 for fp16/bf16 inputs).
std::tuple<at::Tensor, at::Tensor> normalize_rows(const at::Tensor& features, at::ScalarType acc) {
  at::Tensor f = features.to(acc).contiguous();
  at::Tensor norms = f.norm(2, {1}, /*keepdim=*/true).clamp_min(kNormEps);
  return {f / norms, norms};
}

template <typename scalar_t>
void forward_tiles(const at::Tensor& z, double temperature, at::Tensor& lse, at::Tensor& positive,
                   at::Tensor& rank) {
  const int64_t rows = z.size(0);
  const int64_t half = rows / 2;
  const scalar_t inv_t = static_cast<scalar_t>(1.0 / temperature);
  auto* lse_p = lse.data_ptr<scalar_t>();
  auto* pos_p = positive.data_ptr<scalar_t>();
  auto* rank_p = rank.data_ptr<int64_t>();
  // running max and scaled sum of the online log-sum-exp
  at::Tensor run_max = at::full({rows}, -std::numeric_limits<double>::infinity(), z.options());
  at::Tensor run_sum = at::zeros({rows}, z.options());
  auto* max_p = run_max.data_ptr<scalar_t>();
  auto* sum_p = run_sum.data_ptr<scalar_t>();
  // the positive logit, from the same GEMM as every other logit of its row
  for (int64_t j0 = 0; j0 < rows; j0 += kTile) {
    const int64_t j1 = std::min(rows, j0 + kTile);
    at::Tensor s = at::mm(z, z.slice(0, j0, j1).t());  // [rows, tile]
    const auto* s_p = s.data_ptr<scalar_t>();
    const int64_t width = j1 - j0;
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* row = s_p + i * width;
        const int64_t partner = i < half ? i + half : i - half;
        scalar_t m = max_p[i];
        for (int64_t c = 0; c < width; ++c) {
          if (j0 + c != i) m = std::max(m, row[c] * inv_t);
        }
        scalar_t acc = sum_p[i] * std::exp(max_p[i] - m);
        for (int64_t c = 0; c < width; ++c) {
          if (j0 + c != i) acc += std::exp(row[c] * inv_t - m);
        }
        max_p[i] = m;
        sum_p[i] = acc;
        if (partner >= j0 && partner < j1) pos_p[i] = row[partner - j0] * inv_t;
      }
    });
  }
  for (int64_t i = 0; i < rows; ++i) lse_p[i] = max_p[i] + std::log(sum_p[i]);
  // rank: how many negatives score above the positive (a second pass: the positive must be known first)
  rank.zero_();
  for (int64_t j0 = 0; j0 < rows; j0 += kTile) {
    const int64_t j1 = std::min(rows, j0 + kTile);
    at::Tensor s = at::mm(z, z.slice(0, j0, j1).t());
    const auto* s_p = s.data_ptr<scalar_t>();
    const int64_t width = j1 - j0;
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* row = s_p + i * width;
        const int64_t partner = i < half ? i + half : i - half;
        int64_t count = 0;
        for (int64_t c = 0; c < width; ++c) {
          const int64_t j = j0 + c;
          count += (j != i && j != partner && row[c] * inv_t > pos_p[i]) ? 1 : 0;
        }
        rank_p[i] += count;
      }
    });
  }
}

template <typename scalar_t>
void backward_tiles(const at::Tensor& z, const at::Tensor& lse, double temperature, at::Tensor& grad_z) {
  const int64_t rows = z.size(0);
  const int64_t half = rows / 2;
  const scalar_t inv_t = static_cast<scalar_t>(1.0 / temperature);
  const auto* lse_p = lse.data_ptr<scalar_t>();
  for (int64_t j0 = 0; j0 < rows; j0 += kTile) {
    const int64_t j1 = std::min(rows, j0 + kTile);
    at::Tensor w = at::mm(z, z.slice(0, j0, j1).t());  // logits * tau, overwritten by the weights
    auto* w_p = w.data_ptr<scalar_t>();
    const int64_t width = j1 - j0;
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        scalar_t* row = w_p + i * width;
        const int64_t partner = i < half ? i + half : i - half;
        for (int64_t c = 0; c < width; ++c) {
          const int64_t j = j0 + c;
          const scalar_t s = row[c] * inv_t;
          scalar_t value = j == i ? scalar_t(0) : std::exp(s - lse_p[i]) + std::exp(s - lse_p[j]);
          if (j == partner) value -= scalar_t(2);
          row[c] = value;
        }
      }
    });
    grad_z.addmm_(w, z.slice(0, j0, j1));
  }
}

void check_features(const at::Tensor& features, double temperature) {
  TORCH_CHECK(features.dim() == 2, "info_nce expects [2N, D] features, got ", features.dim(), " dimensions");
  TORCH_CHECK(features.size(0) >= 2 && features.size(0) % 2 == 0,
              "info_nce needs an even number of rows (two views per sample), got ", features.size(0));
  TORCH_CHECK(at::isFloatingType(features.scalar_type()), "info_nce needs floating-point features, got ",
              features.scalar_type());
  TORCH_CHECK(temperature > 0, "temperature must be positive, got ", temperature);
}

at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

// Returns (loss [], lse [2N], rank [2N] int64); lse is in the accumulation type and saved for backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward_cpu(const at::Tensor& features,
                                                                     double temperature) {
  check_features(features, temperature);
  const auto acc = accumulation_type(features.scalar_type());
  auto [z, norms] = normalize_rows(features, acc);
  const int64_t rows = z.size(0);
  at::Tensor lse = at::empty({rows}, z.options());
  at::Tensor positive = at::empty({rows}, z.options());
  at::Tensor rank = at::empty({rows}, z.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "info_nce_forward_cpu", [&] {
    forward_tiles<scalar_t>(z, temperature, lse, positive, rank);
  });
  at::Tensor loss = (lse - positive).mean().to(features.scalar_type());
  return {loss, lse, rank};
}

at::Tensor info_nce_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& lse,
                                 double temperature) {
  check_features(features, temperature);
  const auto acc = accumulation_type(features.scalar_type());
  auto [z, norms] = normalize_rows(features, acc);
  const int64_t rows = z.size(0);
  at::Tensor grad_z = at::zeros_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "info_nce_backward_cpu", [&] {
    backward_tiles<scalar_t>(z, lse.to(acc).contiguous(), temperature, grad_z);
  });
  grad_z.mul_(grad_loss.to(acc) / (static_cast<double>(rows) * temperature));
  // through z = f / max(||f||, eps): (g - z (z.g)) / ||f|| where the norm is above eps, g / eps below
  at::Tensor f = features.to(acc);
  at::Tensor raw = f.norm(2, {1}, true);
  at::Tensor projected = grad_z - z * (z * grad_z).sum(1, true);
  at::Tensor grad_f = at::where(raw > kNormEps, projected / norms, grad_z / norms);
  return grad_f.to(features.scalar_type());
}

}  // namespace sswp_fast
