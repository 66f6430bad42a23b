// CUDA kernels of the sswp_fast::info_nce_forward / info_nce_backward custom ops (notation in info_nce.h).
//
// Like the CPU kernels, both passes stream over column tiles of the similarity matrix and never hold it
// whole. Each tile is one cuBLAS GEMM of the normalised features (fp16/bf16 inputs stay in their dtype, so
// the GEMM runs on tensor cores, and write fp32 logits: fp32 accumulation), followed by one fused kernel:
// - forward: one warp per row folds the tile into that row's running max and sum of exp (online
//   log-sum-exp) and counts the negatives that score above the positive;
// - backward: one thread per element writes the weight P_ij + P_ji - 2 [j = p(i)] (self excluded), and a
//   second GEMM accumulates weights x features into dL/dz.
// Extra memory: O(N*D + N*kTile), kTile columns of logits and of weights, never 2N x 2N.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "info_nce.h"

namespace sswp_fast {
namespace {

constexpr int64_t kTile = 512;
constexpr int kWarpsPerBlock = 8;
constexpr int kWarp = 32;
constexpr int kElementThreads = 256;

__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return exp(x); }

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ int64_t partner_of(int64_t row, int64_t rows) {
  const int64_t half = rows / 2;
  return row < half ? row + half : row - half;
}

// One warp per row: folds logits s[row, 0:width) (columns j0 + c of the full matrix, raw dot products) into
// the row's running max and sum of exp, and adds the negatives scoring above the positive to its rank.
template <typename acc_t>
__global__ void forward_tile_kernel(const acc_t* __restrict__ s, int64_t ld, int64_t rows, int64_t width,
                                    int64_t j0, acc_t inv_t, const acc_t* __restrict__ positive,
                                    acc_t* __restrict__ run_max, acc_t* __restrict__ run_sum,
                                    int64_t* __restrict__ rank) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= rows) return;  // uniform across the warp
  const int64_t self_col = row - j0;  // outside [0, width) when the row's own column is in another tile
  const int64_t partner_col = partner_of(row, rows) - j0;
  const acc_t pos = positive[row];
  const acc_t* line = s + row * ld;
  const acc_t neg_inf = -static_cast<acc_t>(INFINITY);
  acc_t tile_max = neg_inf;
  int above = 0;
  for (int64_t c = lane; c < width; c += kWarp) {
    if (c == self_col) continue;
    const acc_t v = line[c] * inv_t;
    tile_max = max(tile_max, v);
    above += (c != partner_col && v > pos);
  }
  tile_max = warp_max(tile_max);
  above = warp_sum(above);
  const acc_t old_max = run_max[row];
  const acc_t new_max = max(old_max, tile_max);
  if (new_max == neg_inf) return;  // nothing but the row itself so far (N = 1)
  acc_t total = 0;
  for (int64_t c = lane; c < width; c += kWarp) {
    if (c != self_col) total += exp_of(line[c] * inv_t - new_max);
  }
  total = warp_sum(total);
  if (lane == 0) {
    run_sum[row] = run_sum[row] * exp_of(old_max - new_max) + total;
    run_max[row] = new_max;
    rank[row] += above;
  }
}

// One thread per element of the tile: w[row, c] = P_ij + P_ji - 2 [j = p(i)] for j = j0 + c, 0 for j = i.
// Both probabilities are at most 1 (lse_i >= s_ij for every j != i), so the exps cannot overflow.
template <typename acc_t, typename w_t>
__global__ void backward_tile_kernel(const acc_t* __restrict__ s, int64_t ld, int64_t rows, int64_t width,
                                     int64_t j0, acc_t inv_t, const acc_t* __restrict__ lse, w_t* __restrict__ w,
                                     int64_t ldw) {
  const int64_t count = rows * width;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < count;
       index += stride) {
    const int64_t row = index / width;
    const int64_t c = index - row * width;
    const int64_t col = j0 + c;
    acc_t value = 0;
    if (col != row) {
      const acc_t v = s[row * ld + c] * inv_t;
      value = exp_of(v - lse[row]) + exp_of(v - lse[col]);
      if (col == partner_of(row, rows)) value -= 2;
    }
    w[row * ldw + c] = static_cast<w_t>(value);
  }
}

// The normalised features as the GEMMs take them: fp16/bf16 inputs are rounded back to their dtype so that
// cuBLAS uses tensor cores; fp32 and fp64 stay in the accumulation type.
at::Tensor gemm_operand(const at::Tensor& z, at::ScalarType input) {
  return input == at::kHalf || input == at::kBFloat16 ? z.to(input) : z;
}

// raw dot products of every row with rows [j0, j1) into buf's first j1 - j0 columns, in buf's dtype
at::Tensor similarity_tile(const at::Tensor& zg, int64_t j0, int64_t j1, at::Tensor& buf) {
  at::Tensor s = buf.narrow(1, 0, j1 - j0);
  at::Tensor columns = zg.slice(0, j0, j1).t();
  if (zg.scalar_type() == buf.scalar_type()) {
    at::mm_out(s, zg, columns);
  } else {
    at::mm_out(s, zg, columns, buf.scalar_type());
  }
  return s;
}

int64_t blocks_for(int64_t work, int64_t per_block) { return std::max<int64_t>(1, (work + per_block - 1) / per_block); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_forward_cuda(const at::Tensor& features,
                                                                      double temperature) {
  detail::check_features(features, temperature);
  const c10::cuda::CUDAGuard guard(features.device());
  auto [z, norms] = detail::normalize_rows(features);
  const at::Tensor zg = gemm_operand(z, features.scalar_type());
  const int64_t rows = z.size(0);
  at::Tensor positive = detail::positive_logits(z, temperature).contiguous();
  at::Tensor run_max = at::full({rows}, -std::numeric_limits<double>::infinity(), z.options());
  at::Tensor run_sum = at::zeros({rows}, z.options());
  at::Tensor rank = at::zeros({rows}, z.options().dtype(at::kLong));
  at::Tensor buf = at::empty({rows, std::min(kTile, rows)}, z.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t j0 = 0; j0 < rows; j0 += kTile) {
    const int64_t j1 = std::min(rows, j0 + kTile);
    at::Tensor s = similarity_tile(zg, j0, j1, buf);
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "info_nce_forward_cuda", [&] {
      forward_tile_kernel<scalar_t><<<blocks_for(rows, kWarpsPerBlock), kWarpsPerBlock * kWarp, 0, stream>>>(
          s.data_ptr<scalar_t>(), s.stride(0), rows, j1 - j0, j0, static_cast<scalar_t>(1.0 / temperature),
          positive.data_ptr<scalar_t>(), run_max.data_ptr<scalar_t>(), run_sum.data_ptr<scalar_t>(),
          rank.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor lse = run_max + run_sum.log();
  return {detail::mean_loss(lse, positive, features), lse, rank};
}

at::Tensor info_nce_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& features, const at::Tensor& lse,
                                  double temperature) {
  detail::check_features(features, temperature);
  detail::check_saved(lse, features);
  const c10::cuda::CUDAGuard guard(features.device());
  auto [z, norms] = detail::normalize_rows(features);
  const at::Tensor zg = gemm_operand(z, features.scalar_type());
  const int64_t rows = z.size(0);
  const int64_t cols = std::min(kTile, rows);
  const at::Tensor row_lse = lse.to(z.scalar_type()).contiguous();
  at::Tensor grad_z = at::zeros_like(z);
  at::Tensor buf = at::empty({rows, cols}, z.options());
  at::Tensor weights = at::empty({rows, cols}, zg.options());
  const bool mixed = zg.scalar_type() != z.scalar_type();
  at::Tensor partial = mixed ? at::empty_like(z) : at::Tensor();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t j0 = 0; j0 < rows; j0 += kTile) {
    const int64_t j1 = std::min(rows, j0 + kTile);
    const int64_t width = j1 - j0;
    at::Tensor s = similarity_tile(zg, j0, j1, buf);
    at::Tensor w = weights.narrow(1, 0, width);
    AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "info_nce_backward_cuda", [&] {
      using acc_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "info_nce_backward_cuda", [&] {
        backward_tile_kernel<acc_t, scalar_t>
            <<<blocks_for(rows * width, kElementThreads), kElementThreads, 0, stream>>>(
                s.data_ptr<acc_t>(), s.stride(0), rows, width, j0, static_cast<acc_t>(1.0 / temperature),
                row_lse.data_ptr<acc_t>(), w.data_ptr<scalar_t>(), w.stride(0));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    const at::Tensor columns = zg.slice(0, j0, j1);
    if (mixed) {
      at::mm_out(partial, w, columns, z.scalar_type());
      grad_z.add_(partial);
    } else {
      grad_z.addmm_(w, columns);
    }
  }
  return detail::normalize_backward(grad_z, z, norms, features, grad_loss, temperature);
}

}  // namespace sswp_fast

TORCH_LIBRARY_IMPL(sswp_fast, CUDA, m) {
  m.impl("info_nce_forward", &sswp_fast::info_nce_forward_cuda);
  m.impl("info_nce_backward", &sswp_fast::info_nce_backward_cuda);
}
