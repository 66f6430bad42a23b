// InfoNCE over [2N, D] features without the 2N x 2N similarity matrix: CPU kernels of the
// sswp_fast::info_nce_forward / info_nce_backward custom ops (schemas in info_nce_ops.cpp).
//
// Notation in info_nce.h. Forward streams over column tiles of s (one GEMM per tile, then vectorised,
// OpenMP-parallel ATen kernels on the tile) keeping an online log-sum-exp per row and counting negatives above the positive;
// backward recomputes the tiles: dL/dz_i = g/(2N tau) * sum_j (P_ij + P_ji - 2 [j = p(i)]) z_j with
// P_ij = exp(s_ij - lse_i), then the L2-normalisation backward. Extra memory: O(N*D + N*TILE).

#include "info_nce.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

namespace sswp_fast {
namespace {

constexpr int64_t kTile = 256;

// Column tiles never straddle the boundary between the two views, so a tile's partner rows are contiguous.
template <typename F>
void for_each_tile(int64_t rows, F&& body) {
  const int64_t half = rows / 2;
  for (int64_t start : {int64_t(0), half}) {
    for (int64_t j0 = start; j0 < start + half; j0 += kTile) {
      const int64_t j1 = std::min(start + half, j0 + kTile);
      body(j0, j1, j0 < half ? j0 + half : j0 - half);
    }
  }
}

// alpha * z z_J^T + bias into buf (reused across tiles): the logits of all rows against columns [j0, j1),
// scaled and shifted by the GEMM itself so no extra pass over the tile is needed
at::Tensor tile_gemm(const at::Tensor& z, int64_t j0, int64_t j1, double alpha, const at::Tensor& bias,
                     at::Tensor& buf) {
  at::Tensor s = buf.narrow(1, 0, j1 - j0);
  at::addmm_out(s, bias, z, z.slice(0, j0, j1).t(), /*beta=*/1, /*alpha=*/alpha);
  return s;
}

void forward_tiles(const at::Tensor& z, double temperature, at::Tensor& lse, at::Tensor& positive,
                   at::Tensor& rank) {
  const int64_t rows = z.size(0);
  const int64_t half = rows / 2;
  const double inv_t = 1.0 / temperature;
  // Cosine logits lie in [-1/tau, 1/tau], so exp(s - 1/tau) cannot overflow; it underflows only when
  // 2/tau exceeds the exponent range, where the per-tile running maximum takes over.
  const double range = z.scalar_type() == at::kDouble ? 700.0 : 80.0;
  const bool fixed_shift = 2.0 * inv_t < range;
  const double inf = std::numeric_limits<double>::infinity();
  positive.copy_(detail::positive_logits(z, temperature));
  at::Tensor run_max = at::full({rows}, fixed_shift ? inv_t : -inf, z.options());
  at::Tensor run_sum = at::zeros({rows}, z.options());
  at::Tensor buf = at::empty({rows, std::min(kTile, half)}, z.options());
  at::Tensor no_bias = at::zeros({1}, z.options());
  rank.zero_();
  for_each_tile(rows, [&](int64_t j0, int64_t j1, int64_t p0) {
    const int64_t width = j1 - j0;
    at::Tensor s = tile_gemm(z, j0, j1, inv_t, no_bias, buf);
    s.narrow(0, j0, width).diagonal().fill_(-inf);  // self is not a candidate
    // rank: negatives above the positive (the partner column counted out explicitly)
    rank.add_(s.gt(positive.unsqueeze(1)).sum(1));
    rank.narrow(0, p0, width)
        .sub_(s.narrow(0, p0, width).diagonal().gt(positive.narrow(0, p0, width)).to(at::kLong));
    if (fixed_shift) {
      run_sum.add_(s.sub_(inv_t).exp_().sum(1));
      return;
    }
    at::Tensor m = at::maximum(run_max, std::get<0>(s.max(1)));
    // a row whose candidates so far are all masked has max -inf: shift by 0 there (exp(-inf) = 0, no NaN)
    at::Tensor shift = at::where(m.isneginf(), at::zeros_like(m), m);
    run_sum.mul_((run_max - shift).exp_()).add_(s.sub_(shift.unsqueeze(1)).exp_().sum(1));
    run_max.copy_(m);
  });
  lse.copy_(run_max + run_sum.log());
}

void backward_tiles(const at::Tensor& z, const at::Tensor& lse, double temperature, at::Tensor& grad_z) {
  const int64_t rows = z.size(0);
  const double inv_t = 1.0 / temperature;
  const int64_t cols = std::min(kTile, rows / 2);
  at::Tensor buf = at::empty({rows, cols}, z.options());
  at::Tensor other = at::empty({rows, cols}, z.options());
  at::Tensor neg_lse = -lse.unsqueeze(1);
  // P_ji = P_ij * exp(lse_i) * exp(-lse_j) saves a second exp pass; |lse| <= 1/tau + log(2N), so the factors
  // are representable unless tau is tiny, where P_ji is exponentiated directly
  const double range = z.scalar_type() == at::kDouble ? 700.0 : 80.0;
  const bool factored = 2.0 * inv_t < range;
  at::Tensor up = lse.exp();
  at::Tensor down = (-lse).exp();
  at::Tensor one = at::ones({1}, z.options());
  for_each_tile(rows, [&](int64_t j0, int64_t j1, int64_t p0) {
    const int64_t width = j1 - j0;
    at::Tensor w = other.narrow(1, 0, width);
    if (factored) {
      at::Tensor p = tile_gemm(z, j0, j1, inv_t, neg_lse, buf).exp_();     // P_ij
      at::addr_out(w, one, up, down.slice(0, j0, j1));                   // 1 + exp(lse_i - lse_j)
      w.mul_(p);                                                         // P_ij + P_ji
    } else {
      at::Tensor s = tile_gemm(z, j0, j1, inv_t, at::zeros({1}, z.options()), buf);
      at::sub_out(w, s, lse.slice(0, j0, j1).unsqueeze(0)).exp_();
      w.add_(s.add_(neg_lse).exp_());
    }
    w.narrow(0, j0, width).diagonal().zero_();
    w.narrow(0, p0, width).diagonal().sub_(2);
    grad_z.addmm_(w, z.slice(0, j0, j1));
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward_cpu(const at::Tensor& features,
                                                                     double temperature) {
  detail::check_features(features, temperature);
  auto [z, norms] = detail::normalize_rows(features);
  const int64_t rows = z.size(0);
  at::Tensor lse = at::empty({rows}, z.options());
  at::Tensor positive = at::empty({rows}, z.options());
  at::Tensor rank = at::empty({rows}, z.options().dtype(at::kLong));
  forward_tiles(z, temperature, lse, positive, rank);
  return {detail::mean_loss(lse, positive, features), lse, rank};
}

at::Tensor info_nce_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& lse,
                                 double temperature) {
  detail::check_features(features, temperature);
  detail::check_saved(lse, features);
  auto [z, norms] = detail::normalize_rows(features);
  at::Tensor grad_z = at::zeros_like(z);
  backward_tiles(z, lse.to(z.scalar_type()).contiguous(), temperature, grad_z);
  return detail::normalize_backward(grad_z, z, norms, features, grad_loss, temperature);
}

}  // namespace sswp_fast
