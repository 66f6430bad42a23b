// InfoNCE over [2N, D] features without the 2N x 2N similarity matrix: CPU kernels of the
// sswp_fast::info_nce_forward / info_nce_backward custom ops (schemas in info_nce_ops.cpp, notation in
// info_nce.h).
//
// Both passes stream over column tiles of s = z z^T / tau (a batch of up to kTile rows is a single tile). Each
// tile is one GEMM of cosines into a reused buffer, then one fused pass over it that applies 1/tau, parallel over rows (at::parallel_for,
// OpenMP) with vectorizable inner loops (`omp simd`, a branch-free exp):
// - forward: each row folds the tile into its running log-sum-exp and counts the negatives above its positive;
// - backward: each row turns its cosines into w_ij = P_ij + P_ji - 2 [j = p(i)] (0 for j = i), in place, with
//   P_ij = exp(s_ij - lse_i), and a second GEMM accumulates dL/dz += w z_J, followed by the L2-normalisation backward (info_nce.h).
// Extra memory: O(N*D + N*kTile).

#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "info_nce.h"

namespace sswp_fast {
namespace {

constexpr int64_t kTile = 256;
constexpr int64_t kRowsPerTask = 16;

// exp(x) for x <= ~0, branch-free so that loops over it vectorize: x = n ln2 + r with |r| <= ln2 / 2 (n from
// truncation, exact for x <= 0.5), a degree-7 Taylor polynomial for e^r (relative error < 3e-8), and 2^n
// built in the exponent bits; exactly 0 below the normal range
__attribute__((always_inline)) inline float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504f, kLn2Hi = 0.693145752f, kLn2Lo = 1.42860677e-6f;
  const float clamped = x > -87.0f ? x : -87.0f;
  const int32_t n = static_cast<int32_t>(clamped * kLog2e - 0.5f);
  const float nf = static_cast<float>(n);
  const float r = (clamped - nf * kLn2Hi) - nf * kLn2Lo;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float scale = std::bit_cast<float>((n + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

inline double exp_nonpositive(double x) { return std::exp(x); }  // fp64 serves gradcheck: exactness first

// the partner row of row i (rows i and i + N are the two views of sample i)
inline int64_t partner_of(int64_t i, int64_t rows) { return i < rows / 2 ? i + rows / 2 : i - rows / 2; }

// the cosine similarities z z_J^T of all rows against columns [j0, j1), into buf (reused across tiles); the
// passes over the tile scale them by 1/tau as they read them
at::Tensor tile_cosines(const at::Tensor& z, int64_t j0, int64_t j1, at::Tensor& buf) {
  at::Tensor s = buf.narrow(1, 0, j1 - j0);
  at::mm_out(s, z, z.slice(0, j0, j1).t());
  return s;
}

// Running per-row state of the forward pass: log-sum-exp as (shift, sum of exp(s - shift)) and the rank.
template <typename scalar_t>
struct RowState {
  scalar_t* shift;
  scalar_t* sum;
  int64_t* rank;
  const scalar_t* positive;
  scalar_t inv_t;
  bool fixed_shift;  // shift = 1/tau for every row: no max pass (cosine logits never exceed 1/tau)
};

template <typename scalar_t>
void fold_tile(const at::Tensor& s, int64_t j0, RowState<scalar_t> state) {
  const int64_t rows = s.size(0), width = s.size(1), ld = s.stride(0);
  scalar_t* base = s.data_ptr<scalar_t>();
  const scalar_t neg_inf = -std::numeric_limits<scalar_t>::infinity();
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t* line = base + i * ld;
      const int64_t self = i - j0, partner = partner_of(i, rows) - j0;
      if (self >= 0 && self < width) line[self] = neg_inf;  // self is not a candidate
      const scalar_t pos = state.positive[i], inv_t = state.inv_t;
      scalar_t shift = state.shift[i];
      if (!state.fixed_shift) {
        scalar_t top = neg_inf;
#pragma omp simd reduction(max : top)
        for (int64_t c = 0; c < width; ++c) top = std::max(top, line[c]);
        top *= inv_t;
        if (top == neg_inf) continue;  // nothing but the row itself in this tile (N = 1)
        const scalar_t grown = std::max(shift, top);
        if (shift != neg_inf) state.sum[i] *= exp_nonpositive(shift - grown);
        shift = state.shift[i] = grown;
      }
      scalar_t total = 0;
      int64_t above = 0;
#pragma omp simd reduction(+ : total, above)
      for (int64_t c = 0; c < width; ++c) {
        const scalar_t v = line[c] * inv_t;
        total += exp_nonpositive(v - shift);
        above += v > pos;
      }
      if (partner >= 0 && partner < width) above -= line[partner] * inv_t > pos;  // the positive is no negative
      state.sum[i] += total;
      state.rank[i] += above;
    }
  });
}

// one row of weights before the self / partner corrections, in place of the row's cosines: P_ij + P_ji
template <typename scalar_t>
void row_weights(scalar_t* line, const scalar_t* __restrict__ column_lse, scalar_t row_lse, scalar_t inv_t,
                 int64_t width) {
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) {
    const scalar_t v = line[c] * inv_t;
    line[c] = exp_nonpositive(v - row_lse) + exp_nonpositive(v - column_lse[c]);
  }
}

// turns the tile's cosines into w[i, c] = P_ij + P_ji - 2 [j = p(i)] for j = j0 + c, 0 for j = i
template <typename scalar_t>
void tile_weights(at::Tensor& s, int64_t j0, const scalar_t* lse, scalar_t inv_t) {
  const int64_t rows = s.size(0), width = s.size(1), ld = s.stride(0);
  scalar_t* base = s.data_ptr<scalar_t>();
  const scalar_t* column_lse = lse + j0;
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t* weights = base + i * ld;
      row_weights(weights, column_lse, lse[i], inv_t, width);
      const int64_t self = i - j0, partner = partner_of(i, rows) - j0;
      if (self >= 0 && self < width) weights[self] = 0;
      if (partner >= 0 && partner < width) weights[partner] -= 2;
    }
  });
}

void forward_tiles(const at::Tensor& z, double temperature, at::Tensor& lse, at::Tensor& positive,
                   at::Tensor& rank) {
  const int64_t rows = z.size(0);
  const double inv_t = 1.0 / temperature;
  // exp(s - 1/tau) cannot overflow; it underflows only when 2/tau exceeds the exponent range, where a running
  // per-row maximum takes over
  const double range = z.scalar_type() == at::kDouble ? 700.0 : 80.0;
  const bool fixed_shift = 2.0 * inv_t < range;
  positive.copy_(detail::positive_logits(z, temperature));
  at::Tensor shift = at::full({rows}, fixed_shift ? inv_t : -std::numeric_limits<double>::infinity(), z.options());
  at::Tensor sum = at::zeros({rows}, z.options());
  at::Tensor buf = at::empty({rows, std::min(kTile, rows)}, z.options());
  rank.zero_();
  for (int64_t j0 = 0; j0 < rows; j0 += kTile) {
    const at::Tensor s = tile_cosines(z, j0, std::min(rows, j0 + kTile), buf);
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "info_nce_forward_cpu", [&] {
      fold_tile<scalar_t>(s, j0, {shift.data_ptr<scalar_t>(), sum.data_ptr<scalar_t>(), rank.data_ptr<int64_t>(),
                                  positive.data_ptr<scalar_t>(), static_cast<scalar_t>(inv_t), fixed_shift});
    });
  }
  lse.copy_(shift + sum.log());
}

void backward_tiles(const at::Tensor& z, const at::Tensor& lse, double temperature, at::Tensor& grad_z) {
  const int64_t rows = z.size(0);
  const int64_t cols = std::min(kTile, rows);
  at::Tensor buf = at::empty({rows, cols}, z.options());
  for (int64_t j0 = 0; j0 < rows; j0 += kTile) {
    const int64_t j1 = std::min(rows, j0 + kTile);
    at::Tensor w = tile_cosines(z, j0, j1, buf);
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "info_nce_backward_cpu", [&] {
      tile_weights<scalar_t>(w, j0, lse.data_ptr<scalar_t>(), static_cast<scalar_t>(1.0 / temperature));
    });
    grad_z.addmm_(w, z.slice(0, j0, j1));
  }
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
